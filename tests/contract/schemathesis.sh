#!/usr/bin/env bash
# The REST contract check (issue 9): schemathesis, pinned from PyPI, generates requests from our
# own OpenAPI document (`/api/v1/rest/openapi.json`) and sends them to a real `matyan serve`
# seeded with the golden records (fixtures/kafka-samples/golden-10k.jsonl.gz). It fails on any
# failed check: a 5xx, a dropped connection, a status, media type or body the document does not
# declare, a request outside the document that is accepted, or one inside it that is refused.
#
# Env: MATYAN_BIN (a built `matyan`; default: `cargo build --bin matyan` and its debug binary),
# SCHEMATHESIS_VENV (where the pinned schemathesis is installed, cached between runs),
# CONTRACT_MAX_EXAMPLES (examples per operation and phase, default 20), CONTRACT_SEED (default 1),
# CONTRACT_OUT (the server log and the JUnit report, default target/contract).
set -Eeuo pipefail

root=$(cd "$(dirname "$0")/../.." && pwd)
SCHEMATHESIS_VERSION=4.32.5
# Its Hypothesis, pinned too: a newer one changes what a fixed seed generates.
HYPOTHESIS_VERSION=6.170.27
venv=${SCHEMATHESIS_VENV:-${XDG_CACHE_HOME:-${HOME:-/root}/.cache}/matyan-ci/schemathesis-venv}
out=${CONTRACT_OUT:-$root/target/contract}
max_examples=${CONTRACT_MAX_EXAMPLES:-20}
seed=${CONTRACT_SEED:-1}
golden=$root/fixtures/kafka-samples/golden-10k.jsonl.gz

log() { echo "contract: $*"; }

rm -rf "$out"
mkdir -p "$out"
out=$(cd "$out" && pwd)
work=$(mktemp -d)
serve_pid=""

cleanup() {
    local rc=$?
    if [ -n "$serve_pid" ]; then
        kill -TERM "$serve_pid" 2>/dev/null || true
        wait "$serve_pid" 2>/dev/null || true
    fi
    if [ "$rc" -ne 0 ]; then
        if [ -f "$out/serve.log" ]; then
            echo "----- last error lines of serve.log -----"
            grep -iE 'error|panic' "$out/serve.log" | tail -n 40 || true
        fi
        echo "contract: FAILED (server log and report in $out)"
    fi
    rm -rf "$work"
    exit "$rc"
}
trap cleanup EXIT

install_schemathesis() {
    if [ ! -x "$venv/bin/python" ]; then
        if ! command -v python3 >/dev/null 2>&1 || ! python3 -c 'import ensurepip, venv' >/dev/null 2>&1; then
            local sudo=""
            if [ "$(id -u)" -ne 0 ]; then sudo="sudo"; fi
            $sudo apt-get update
            $sudo apt-get install -y --no-install-recommends python3 python3-venv
        fi
        python3 -m venv "$venv"
    fi
    if [ "$("$venv/bin/st" --version 2>/dev/null)" != "st, version $SCHEMATHESIS_VERSION" ]; then
        "$venv/bin/python" -m pip install --quiet --disable-pip-version-check "schemathesis==$SCHEMATHESIS_VERSION" "hypothesis==$HYPOTHESIS_VERSION"
    fi
    "$venv/bin/st" --version
}

# Waits until $1 answers 200, or fails after $2 seconds, unless the server died first.
wait_http() {
    local url=$1 secs=$2
    local deadline=$((SECONDS + secs))
    until curl -fsS -o /dev/null "$url" 2>/dev/null; do
        if ! kill -0 "$serve_pid" 2>/dev/null; then log "matyan serve exited before $url answered"; return 1; fi
        if [ "$SECONDS" -ge "$deadline" ]; then log "$url did not answer within ${secs}s"; return 1; fi
        sleep 0.3
    done
}

# The value of counter $1 on /metrics/ (0 when not yet exported).
counter() {
    curl -fsS "$api/metrics/" | awk -v name="$1" '$1 == name { v = $2 } END { print (v == "" ? 0 : v) + 0 }'
}

install_schemathesis
venv=$(cd "$venv" && pwd)

bin=${MATYAN_BIN:-}
if [ -z "$bin" ]; then
    (cd "$root" && cargo build --quiet --bin matyan)
    bin=${CARGO_TARGET_DIR:-$root/target}/debug/matyan
fi
log "server binary: $bin"

data=$work/data
records=$(gzip -dc "$golden" | grep -c .)
"$bin" queue import "$golden" --data-dir "$data" >"$out/import.log" 2>&1
log "imported $records golden records into the embedded queue"

RUST_LOG=${RUST_LOG:-info} "$bin" serve --data-dir "$data" --host 127.0.0.1 --port 0 >"$out/serve.log" 2>&1 &
serve_pid=$!
deadline=$((SECONDS + 60))
until [ -s "$data/serve.addr" ]; do
    if ! kill -0 "$serve_pid" 2>/dev/null; then log "matyan serve exited before listening"; exit 1; fi
    if [ "$SECONDS" -ge "$deadline" ]; then log "matyan serve did not listen within 60s"; exit 1; fi
    sleep 0.2
done
api=http://$(tr -d '\n' <"$data/serve.addr")
wait_http "$api/health/ready/" 30

# Every golden record consumed before the first request, so each run sees the same store.
deadline=$((SECONDS + 120))
until [ "$(counter matyan_ingestion_messages_consumed_total)" -ge "$records" ]; do
    if [ "$SECONDS" -ge "$deadline" ]; then log "the golden records were not consumed within 120s"; exit 1; fi
    sleep 0.5
done
log "matyan serve at $api has consumed the golden records"

# Checks: all of them. Phases: examples, coverage (boundary and negative values of every
# parameter and body) and fuzzing; the stateful phase is left out because the document declares
# no links between operations, so it would only repeat the fuzzing phase. One worker: the
# operations run in one order on one store (a deletion cannot race the reads a seed generated).
# Run from the scratch directory: schemathesis leaves a `.schemathesis/` cache where it runs.
st_rc=0
cd "$work"
"$venv/bin/st" --config-file "$root/tests/contract/schemathesis.toml" run "$api/api/v1/rest/openapi.json" \
    --url "$api" \
    --checks all \
    --phases examples,coverage,fuzzing \
    --max-examples "$max_examples" \
    --seed "$seed" \
    --generation-database none \
    --workers 1 \
    --request-timeout 30 \
    --no-color \
    --report junit --report-dir "$out" || st_rc=$?

# The server's own count, whatever schemathesis saw (the /metrics/ scrapes here included).
metrics=$(curl -fsS "$api/metrics/")
sum_requests() { awk -v class="$1" '/^matyan_http_requests_total\{/ && index($0, class) { s += $NF } END { print s + 0 }'; }
requests=$(sum_requests 'status_class="' <<<"$metrics")
server_errors=$(sum_requests 'status_class="5xx"' <<<"$metrics")
log "matyan serve answered $requests requests, $server_errors with a 5xx"
if [ "$st_rc" -ne 0 ]; then exit "$st_rc"; fi
if [ "$server_errors" -ne 0 ]; then log "the server answered a 5xx"; exit 1; fi
log "no failure: every check passed"
