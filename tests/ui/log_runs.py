"""Logs the UI check's runs with the real matyan-client SDK into the server at argv[1].

Three runs named seed-run-0..2 in experiment `baseline`, tagged `ui-check`, with hparams and a
train and val `loss` and a train `acc` of argv[2] steps each: what `matyan dev seed` writes, sent
the way a training script sends it. Prints the hash of the first run.
"""

import math
import os
import sys

url, steps = sys.argv[1], int(sys.argv[2])
os.environ["MATYAN_FRONTIER_URL"] = url
os.environ["MATYAN_BACKEND_URL"] = url
from matyan_client import Run  # noqa: E402  (the SDK reads its settings at import)

hashes = []
for i in range(3):
    run = Run(run_hash=f"5eed{i:028x}", experiment="baseline", capture_terminal_logs=False)
    run.name = f"seed-run-{i}"
    run["hparams"] = {"lr": 0.01 * (i + 1), "batch_size": 32 * (i + 1)}
    run.add_tag("ui-check")
    decay = 1.0 + i * 0.5
    for step in range(steps):
        x = step / steps
        run.track(math.exp(-x * decay * 3.0) + 0.05 * abs(math.sin(x * 40.0)), name="loss", step=step,
                  epoch=0, context={"subset": "train"})
        run.track(math.exp(-x * decay * 2.5) + 0.1, name="loss", step=step, epoch=0, context={"subset": "val"})
        run.track(1.0 - math.exp(-x * decay * 3.0) * 0.9, name="acc", step=step, epoch=0,
                  context={"subset": "train"})
    if not run._ws.wait_for_flush(120):
        sys.exit(f"run {run.hash}: the gateway did not acknowledge every frame")
    run.close()
    hashes.append(run.hash)
print(hashes[0])
