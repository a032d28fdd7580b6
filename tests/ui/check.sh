#!/usr/bin/env bash
# The UI check, as a person would (issue 4): the real matyan-ui 0.3.2 in headless Chromium, served
# by our `matyan serve --ui-dir` on the API's own origin (issue 8; no matyan-ui process, no CORS),
# holding a few seeded runs. Opens the runs explorer, the metrics explorer with
# `metric.name == "loss"`, a run page and its metrics tab; asserts the run is listed and the chart
# renders (no error toast, SVG lines drawn). Screenshots, the UI's API calls and the logs go to
# $UI_CHECK_OUT (default target/ui-check/).
#
# Installs what it needs when missing: Debian's `chromium` (apt), matyan-ui from PyPI into a venv
# (Python 3.11 with --ignore-requires-python, pinned by fixtures/python-constraints.txt, and
# --no-deps: only its build is used), and
# playwright-core from npm (the driver; it uses the system Chromium, no browser download). They are
# kept under $UI_CHECK_CACHE (default ~/.cache/matyan-ui-check) for the next run.
#
# The runs are logged by the real matyan-client 0.3.0 SDK (tests/ui/log_runs.py) through the
# server's own gateway, as a training script would, once `matyan serve` is up.
#
# Env: MATYAN_BIN (a built `matyan`; default: `cargo build --bin matyan` and its debug binary),
#      UI_CHECK_OUT, UI_CHECK_CACHE, CHROMIUM (default /usr/bin/chromium).
set -Eeuo pipefail

root=$(cd "$(dirname "$0")/../.." && pwd)
out=${UI_CHECK_OUT:-$root/target/ui-check}
cache=${UI_CHECK_CACHE:-${HOME:-/root}/.cache/matyan-ui-check}
export CHROMIUM=${CHROMIUM:-/usr/bin/chromium}
PLAYWRIGHT_VERSION=1.65.1
UI_VERSION=0.3.2
CLIENT_VERSION=0.3.0

rm -rf "$out"
mkdir -p "$out" "$cache"
work=$(mktemp -d)
pids=()

log() { echo "ui-check: $*"; }

cleanup() {
    local rc=$?
    for pid in "${pids[@]}"; do
        kill -TERM "$pid" 2>/dev/null || true
    done
    for pid in "${pids[@]}"; do
        wait "$pid" 2>/dev/null || true
    done
    if [ "$rc" -ne 0 ]; then
        for f in serve.log; do
            if [ -f "$out/$f" ]; then
                echo "----- last lines of $f (static files left out) -----"
                grep -v 'GET /static-files/' "$out/$f" | tail -n 40
            fi
        done
        echo "ui-check: FAILED (screenshots and logs in $out)"
    fi
    rm -rf "$work"
    exit "$rc"
}
trap cleanup EXIT

install_chromium() {
    if [ -x "$CHROMIUM" ]; then return; fi
    local sudo=""
    if [ "$(id -u)" -ne 0 ]; then sudo="sudo"; fi
    $sudo apt-get update -qq
    $sudo apt-get install -y -qq --no-install-recommends chromium >/dev/null
}

install_ui() {
    local venv=$cache/venv
    if "$venv/bin/pip" show matyan-ui 2>/dev/null | grep -q "^Version: $UI_VERSION$"; then
        return
    fi
    local py
    py=$(command -v python3.11 || command -v python3)
    rm -rf "$venv"
    "$py" -m venv "$venv"
    "$venv/bin/pip" install -q --disable-pip-version-check --ignore-requires-python --no-deps \
        -c "$root/fixtures/python-constraints.txt" "matyan-ui==$UI_VERSION"
}

install_client() {
    local venv=$cache/venv
    if "$venv/bin/pip" show matyan-client 2>/dev/null | grep -q "^Version: $CLIENT_VERSION$"; then
        return
    fi
    "$venv/bin/pip" install -q --disable-pip-version-check \
        -c "$root/fixtures/python-constraints.txt" "matyan-client==$CLIENT_VERSION"
}

# The build inside the installed package (the README's one-liner, without importing the package,
# whose server dependencies are not installed).
ui_build_dir() {
    "$cache/venv/bin/python" -c "import importlib.util, os; \
print(os.path.join(os.path.dirname(importlib.util.find_spec('matyan_ui').origin), 'static'))"
}

install_driver() {
    local dir=$cache/node
    if [ -f "$dir/node_modules/playwright-core/package.json" ] &&
        grep -q "\"version\": \"$PLAYWRIGHT_VERSION\"" "$dir/node_modules/playwright-core/package.json"; then
        return
    fi
    mkdir -p "$dir"
    (cd "$dir" && echo '{"private": true}' >package.json &&
        npm install --silent --no-audit --no-fund "playwright-core@$PLAYWRIGHT_VERSION" >/dev/null)
}

# Waits until $1 answers 200, or fails after $2 seconds, unless process $3 died first.
wait_http() {
    local url=$1 secs=$2 pid=$3
    local deadline=$((SECONDS + secs))
    until curl -fsS -o /dev/null "$url" 2>/dev/null; do
        if ! kill -0 "$pid" 2>/dev/null; then log "process $pid exited before $url answered"; return 1; fi
        if [ "$SECONDS" -ge "$deadline" ]; then log "$url did not answer within ${secs}s"; return 1; fi
        sleep 0.3
    done
}

log "installing what is missing (chromium, matyan-ui $UI_VERSION, playwright-core $PLAYWRIGHT_VERSION)"
install_chromium
install_ui
install_client
install_driver

bin=${MATYAN_BIN:-}
if [ -z "$bin" ]; then
    (cd "$root" && cargo build --quiet --bin matyan)
    bin=${CARGO_TARGET_DIR:-$root/target}/debug/matyan
fi
log "server binary: $bin"

data=$work/data

ui_dir=$(ui_build_dir)
log "ui build: $ui_dir"
RUST_LOG=${RUST_LOG:-info} "$bin" serve --data-dir "$data" --host 127.0.0.1 --port 0 --ui-dir "$ui_dir" \
    >"$out/serve.log" 2>&1 &
serve_pid=$!
pids+=("$serve_pid")
deadline=$((SECONDS + 60))
until [ -s "$data/serve.addr" ]; do
    if ! kill -0 "$serve_pid" 2>/dev/null; then log "matyan serve exited before listening"; exit 1; fi
    if [ "$SECONDS" -ge "$deadline" ]; then log "matyan serve did not listen within 60s"; exit 1; fi
    sleep 0.2
done
api=http://$(tr -d '\n' <"$data/serve.addr")
wait_http "$api/health/ready/" 30 "$serve_pid"
log "matyan serve with the ui at $api"

# The page calls the origin that served it.
if ! curl -fsS "$api/runs" | grep -qF "window.API_HOST_BASE=\"$api\""; then
    log "the page at $api/runs does not call $api"
    exit 1
fi

log "logging 3 runs with matyan-client $CLIENT_VERSION through the server's gateway"
run_hash=$(cd "$work" && "$cache/venv/bin/python" "$root/tests/ui/log_runs.py" "$api" 300 2>"$out/client.log" | tail -n 1)
log "first run: $run_hash"
# Every point applied before the browser looks (ingestion runs behind the gateway's acknowledgement).
"$cache/venv/bin/python" - "$api" "$run_hash" <<'PY'
import json, sys, time, urllib.request
api, run = sys.argv[1], sys.argv[2]
body = json.dumps([{"name": "loss", "context": {"subset": "train"}}]).encode()
deadline = time.time() + 60
while True:
    req = urllib.request.Request(f"{api}/api/v1/rest/runs/{run}/metric/get-batch/?record_density=1000",
                                 data=body, headers={"Content-Type": "application/json"})
    try:
        series = json.load(urllib.request.urlopen(req, timeout=10))
        if series and len(series[0]["values"]) == 300:
            break
    except Exception:
        pass
    if time.time() > deadline:
        sys.exit("ui-check: the logged runs were not all applied within 60 s")
    time.sleep(0.3)
PY
# The experiment's id, for a look at its page.
UI_CHECK_EXPERIMENT=$("$cache/venv/bin/python" -c "
import json, sys, urllib.request
exps = json.load(urllib.request.urlopen(sys.argv[1] + '/api/v1/rest/experiments/', timeout=10))
print(next(e['id'] for e in exps if e['name'] == 'baseline'))" "$api")
export UI_CHECK_EXPERIMENT
cp "$root/tests/ui/drive.mjs" "$cache/node/drive.mjs"
node "$cache/node/drive.mjs" "$api" "$api/api/v1/rest" "$out" "$run_hash" seed-run-0 | tee "$out/drive.log"
log "screenshots in $out"
