"""Times one real matyan-client process logging N points as a person would, until every point is
visible through the REST API (issue 8's SDK figure; not a test: it prints figures).

    MATYAN_FRONTIER_URL=http://H:P MATYAN_BACKEND_URL=http://H:P python time_points.py [N]

A tight `run.track()` loop of N points of `loss` (one context), then `wait_for_flush()` and
`close()`; the clock runs from the first `track()` until `metric/get-batch` returns all N points.
Prints one JSON line: points, seconds to enqueue, to flush (every frame acknowledged), to visible,
and points/s to visible.
"""

import json
import os
import sys
import time

import httpx
from matyan_client import Run

n = int(sys.argv[1]) if len(sys.argv) > 1 else 100_000
backend = os.environ["MATYAN_BACKEND_URL"]

run = Run(experiment="time-points", capture_terminal_logs=False)
start = time.monotonic()
for step in range(n):
    run.track(1.0 / (step + 1), name="loss", step=step, context={"subset": "train"})
enqueued = time.monotonic() - start
if not run._ws.wait_for_flush(3600):
    sys.exit("the gateway did not acknowledge every frame within an hour")
flushed = time.monotonic() - start
run.close()

body = [{"name": "loss", "context": {"subset": "train"}}]
url = f"{backend}/api/v1/rest/runs/{run.hash}/metric/get-batch/"
while True:
    resp = httpx.post(url, json=body, params={"record_density": n}, timeout=120)
    series = resp.json() if resp.status_code == 200 else []
    if series and len(series[0]["values"]) == n:
        break
    if time.monotonic() - start > 3600:
        sys.exit(f"not all {n} points visible within an hour")
    time.sleep(0.05)
visible = time.monotonic() - start
print(json.dumps({
    "points": n,
    "enqueue_s": round(enqueued, 2),
    "flushed_s": round(flushed, 2),
    "visible_s": round(visible, 2),
    "points_per_s_to_visible": round(n / visible),
}))
