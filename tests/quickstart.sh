#!/usr/bin/env bash
# The README's quick start, executed as written (issue 8): the commands and `train.py` between the
# `quickstart:begin` and `quickstart:end` markers of README.md, in a fresh directory. Two
# substitutions only: `cargo build --release` is skipped and `./target/release/matyan` is the
# binary CI's test step built ($MATYAN_BIN, default target/debug/matyan), so CI does not compile
# a second time. Then checks what a person would see: the run logged through the real SDK is read
# back with all its points through the REST API, and the UI page is served at /.
#
# Needs port 53800 free (the quick start uses the default port) and PyPI.
set -Eeuo pipefail

root=$(cd "$(dirname "$0")/.." && pwd)
bin=${MATYAN_BIN:-${CARGO_TARGET_DIR:-$root/target}/debug/matyan}
[ -x "$bin" ] || { echo "quickstart: $bin is not built (cargo build --bin matyan)"; exit 1; }
work=$(mktemp -d)
serve_pid=""

cleanup() {
    local rc=$?
    if [ -n "$serve_pid" ] && kill -0 "$serve_pid" 2>/dev/null; then
        kill -INT "$serve_pid" 2>/dev/null || true
        # The README's commands started it, not this shell, so `wait` cannot wait for it: poll
        # until it has exited (its clean stop still writes its memtables into the data directory,
        # which `rm -rf` below would race), 30 s at most.
        for _ in $(seq 300); do
            kill -0 "$serve_pid" 2>/dev/null || break
            sleep 0.1
        done
    fi
    if [ "$rc" -ne 0 ] && [ -f "$work/serve.log" ]; then
        echo "----- last lines of the server's log -----"
        tail -n 30 "$work/serve.log"
        echo "quickstart: FAILED"
    fi
    rm -rf "$work"
    exit "$rc"
}
trap cleanup EXIT

# The block between the markers: its sh fence and its python fence.
section=$(sed -n '/<!-- quickstart:begin -->/,/<!-- quickstart:end -->/p' "$root/README.md")
commands=$(printf '%s\n' "$section" | awk '/^```sh$/{on=1; next} /^```$/{on=0} on')
train=$(printf '%s\n' "$section" | awk '/^```python$/{on=1; next} /^```$/{on=0} on')
[ -n "$commands" ] && [ -n "$train" ] || { echo "quickstart: no quick start block found in README.md"; exit 1; }
printf '%s\n' "$train" > "$work/train.py"
ln -s "$root/fixtures" "$work/fixtures"

script=$work/quickstart-commands.sh
{
    echo 'set -Eeuo pipefail'
    printf '%s\n' "$commands" | while IFS= read -r line; do
        case "$line" in
            "cargo build --release") echo ": skipped, the binary of the test step is used" ;;
            *"./target/release/matyan "*"&")
                # The server goes to the background as written; its pid and log are kept for the checks.
                printf '%s\n' "${line//.\/target\/release\/matyan/\"$bin\"}" | sed 's/&$/> serve.log 2>\&1 \&/'
                echo 'echo $! > serve.pid'
                ;;
            *) printf '%s\n' "${line//.\/target\/release\/matyan/\"$bin\"}" ;;
        esac
    done
} > "$script"
echo "quickstart: running the README's commands:"
sed 's/^/  | /' "$script"
(cd "$work" && bash "$script") | tee "$work/out.txt"
serve_pid=$(cat "$work/serve.pid")

run=$(sed -n 's/^logged run \([0-9a-f]\{32\}\)$/\1/p' "$work/out.txt")
[ -n "$run" ] || { echo "quickstart: train.py did not print the run"; exit 1; }
echo "quickstart: logged run $run; reading it back"

# Every point of both series, read through the SDK's read API once ingestion applied them.
cat > "$work/check.py" <<'EOF'
import sys, time
from matyan_client import Repo

url, run_hash = sys.argv[1], sys.argv[2]
deadline = time.time() + 60
while True:
    try:
        run = Repo(url).get_run(run_hash)
        traces = [{"name": "loss", "context": {"subset": "train"}}, {"name": "acc", "context": {"subset": "val"}}]
        series = run._http.get_run_metric_batch(run_hash, traces, record_density=100000) if run else []
        counts = {s["name"]: len(s["values"]) for s in series}
    except Exception as e:  # the run may not be applied yet
        counts = {"error": str(e)}
    if counts.get("loss") == 1000 and counts.get("acc") == 1000:
        break
    if time.time() > deadline:
        sys.exit(f"quickstart: expected 1000 points of loss and acc, got {counts}")
    time.sleep(0.5)
assert run["hparams"] == {"lr": 0.01, "batch_size": 32}, run["hparams"]
assert run.props["experiment"]["name"] == "quickstart", run.props
print("quickstart: run read back:", counts)
EOF
"$work/.venv/bin/python" "$work/check.py" http://localhost:53800 "$run"

page=$("$work/.venv/bin/python" -c "
import urllib.request
req = urllib.request.Request('http://localhost:53800/', headers={'Accept': 'text/html'})
print(urllib.request.urlopen(req, timeout=10).read().decode())")
case "$page" in
    *index*|*static-files*) echo "quickstart: the UI page is served at /" ;;
    *) echo "quickstart: / did not answer the UI page"; exit 1 ;;
esac
echo "quickstart: ok"
