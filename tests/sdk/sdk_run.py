"""The real matyan-client 0.3.0 SDK logging a run and reading it back, for tests/sdk_client.rs.

    sdk_run.py log   --run H --phase 1|2 [--no-image] [--no-terminal]
    sdk_run.py check --run H --phases 1|2 [--no-image] [--no-terminal] [--data-dir D]
    sdk_run.py shape --run H

`log` writes one phase of a deterministic run through the WebSocket gateway
(MATYAN_FRONTIER_URL): phase 1 creates the run (hparams, 20,000 points over 3 metrics x 2
contexts, tags, a text and 300 of 2 KB, log records, terminal lines, an image), phase 2 resumes it with
`force_resume=True` and appends points and a tag. `check` waits until the backend
(MATYAN_BACKEND_URL) has ingested the phases, reads the run back through the SDK's read API and
compares every value with what was logged; it exits non-zero naming the first difference, else
prints one JSON line `{"ok": true, "answers": {...}}` where `answers` are the REST answers with
times and ids left out (two paths given the same script must give equal answers). `shape` logs a
small run with no terminal capture and nothing time-dependent, for comparing gateway records.

Everything logged is a pure function of the run hash and the phase, so `check` can recompute it.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import struct
import sys
import time
import zlib
from pathlib import Path

METRICS = ("loss", "acc", "correct")
CONTEXTS = ({"subset": "train"}, {"subset": "val"})
SERIES = [(m, c) for m in METRICS for c in CONTEXTS]
PHASE_POINTS = {1: (0, 20_000), 2: (20_000, 23_000)}
HPARAMS = {"lr": 0.001, "layers": [64, 32], "optimizer": {"name": "adam", "betas": [0.9, 0.999]}, "seed": 7}
TAGS = {1: ["sdk", "baseline"], 2: ["resumed"]}
TEXT = "héllo from the real SDK\nsecond line"
# Texts of 2 KB: frames of 100 of them pass 64 KB, which the gateway encodes on the blocking pool.
MANY_TEXTS = 300


def many_text(i: int) -> str:
    return f"{i:04d} " + "ü" * 1000
TERMINAL = ["terminal line one", "terminal line two: ünïcode"]
RECORDS = [
    (20, "info record", {"epoch": 1, "note": "x"}),
    (30, "warning record", None),
    (40, "error record", {"code": 3}),
    (10, "debug record", None),
]
WAIT_SECONDS = 180


def fail(msg: str) -> None:
    print(f"sdk_run.py: {msg}", file=sys.stderr, flush=True)
    sys.exit(1)


def png_bytes() -> bytes:
    """A valid 2x2 RGB PNG made without PIL (the SDK accepts raw bytes)."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    rows = b"\x00" + bytes([255, 0, 0, 0, 255, 0]) + b"\x00" + bytes([0, 0, 255, 255, 255, 255])
    ihdr = struct.pack(">IIBBBBB", 2, 2, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(rows)) + chunk(b"IEND", b"")


def point(i: int) -> tuple[str, dict, int, float | int]:
    """The i-th point of the run: (metric, context, step, value)."""
    name, ctx = SERIES[i % len(SERIES)]
    step = i // len(SERIES)
    value: float | int = (i * 37) % 1000 if name == "correct" else math.sin(i) * 1000.0 + i / 7.0
    return name, ctx, step, value


def expected_series(phases: int) -> dict[tuple[str, str], tuple[list[int], list[float]]]:
    out: dict[tuple[str, str], tuple[list[int], list[float]]] = {
        (m, json.dumps(c, sort_keys=True)): ([], []) for m, c in SERIES
    }
    for phase in range(1, phases + 1):
        start, stop = PHASE_POINTS[phase]
        for i in range(start, stop):
            name, ctx, step, value = point(i)
            iters, values = out[(name, json.dumps(ctx, sort_keys=True))]
            iters.append(step)
            values.append(value)
    return out


def log(run_hash: str, phase: int, image: bool, terminal: bool) -> None:
    from matyan_client import Image, Run, Text

    if phase == 1:
        run = Run(run_hash=run_hash, capture_terminal_logs=terminal)
        run["hparams"] = HPARAMS
        run.name = "sdk run"
    else:
        # No terminal capture on resume: its line steps restart at 0 in a new process.
        run = Run(run_hash=run_hash, force_resume=True, capture_terminal_logs=False)
    for tag in TAGS[phase]:
        run.add_tag(tag)
    start, stop = PHASE_POINTS[phase]
    for i in range(start, stop):
        name, ctx, step, value = point(i)
        run.track(value, name=name, step=step, context=ctx)
    if phase == 1:
        run.track(Text(TEXT), name="notes", step=0, context={"kind": "text"})
        for i in range(MANY_TEXTS):
            run.track(Text(many_text(i)), name="many", step=i)
        for level, msg, extra in RECORDS:
            {10: run.log_debug, 20: run.log_info, 30: run.log_warning, 40: run.log_error}[level](msg, **(extra or {}))
        if image:
            run.track(Image(png_bytes(), caption="tiny"), name="img", step=0)
        if terminal:
            for line in TERMINAL:
                print(line, flush=True)
            time.sleep(1.5)  # the capture flushes about every second
    if not run._ws.wait_for_flush(300):
        fail(f"the SDK did not flush its queue: {run._ws.stats}")
    stats = dict(run._ws.stats)
    run.close()
    if stats.get("dropped"):
        fail(f"the SDK dropped messages: {stats}")
    print(json.dumps({"ok": True, "stats": stats}), file=sys.stderr)


def shape(run_hash: str) -> None:
    """A small deterministic run for record-shape comparison (no capture, fixed steps)."""
    from matyan_client import Run, Text

    run = Run(run_hash=run_hash, capture_terminal_logs=False)
    run["hparams"] = {"lr": 0.5, "nested": {"a": [1, 2.5, "x"], "b": None}, "flag": True}
    run.name = "shape"
    run.description = "record shape"
    run.add_tag("t1")
    run.remove_tag("t1")
    run.add_tag("t2")
    for step in range(50):
        run.track(step * 0.25, name="loss", step=step, context={"subset": "train"})
        run.track(step, name="count", step=step, epoch=step // 10)
        run.track(step % 2 == 0, name="even", step=step, context={"subset": "val", "k": 1})
    run.track(float("nan"), name="odd", step=0)
    run.track(float("inf"), name="odd", step=1)
    run.track(Text("text ü"), name="notes", step=3, context={"kind": "text"})
    run.log_info("info", a=1)
    run.log_error("error")
    if not run._ws.wait_for_flush(120):
        fail(f"the SDK did not flush its queue: {run._ws.stats}")
    run.close()


# --- reading back -----------------------------------------------------------------------------


def listify(v):
    """The SDK's stream decoder turns lists into {0: a, 1: b}; turns them back."""
    if isinstance(v, dict):
        if v and all(isinstance(k, int) for k in v) and sorted(v) == list(range(len(v))):
            return [listify(v[k]) for k in sorted(v)]
        return {k: listify(x) for k, x in v.items()}
    if isinstance(v, list):
        return [listify(x) for x in v]
    return v


def fold(pairs):
    """Folds the stream's (path, value) pairs into a tree (deep, unlike the SDK's own decoder)."""
    root: dict = {}
    for path, value in pairs:
        node = root
        for key in path[:-1]:
            nxt = node.get(key)
            if not isinstance(nxt, dict):
                nxt = {}
                node[key] = nxt
            node = nxt
        # A list or dict arrives as an empty marker beside its elements: never let the marker
        # replace elements already folded in.
        if path and not (isinstance(node.get(path[-1]), dict) and isinstance(value, (dict, list)) and not value):
            node[path[-1]] = value
    return listify(root)


def same(a, b) -> bool:
    if isinstance(a, float) and isinstance(b, float) and math.isnan(a) and math.isnan(b):
        return True
    return a == b


def check(run_hash: str, phases: int, image: bool, terminal: bool, data_dir: str | None) -> None:
    from matyan_client import Repo
    from matyan_client.transport.http import _decode_flat_pairs

    repo = Repo(os.environ["MATYAN_BACKEND_URL"])
    want = expected_series(phases)
    traces = [{"name": m, "context": c} for m, c in SERIES]
    total = sum(len(it) for it, _ in want.values())
    want_tags = sorted(t for p in range(1, phases + 1) for t in TAGS[p])

    # Ingestion is asynchronous: wait until every point, the tags and (phase 1) the last message
    # logged, the terminal lines, are readable.
    deadline = time.monotonic() + WAIT_SECONDS
    while True:
        run = repo.get_run(run_hash)
        got = run._http.get_run_metric_batch(run_hash, traces, record_density=0) if run else []
        have = sum(len(t["iters"]) for t in got)
        tags = sorted(run.tags) if run else []
        active = run.props.get("active", True) if run else True
        if have == total and tags == want_tags and not active:
            break
        if time.monotonic() > deadline:
            fail(f"after {WAIT_SECONDS} s: {have} of {total} points, tags {tags} (want {want_tags}), active={active}")
        time.sleep(0.5)

    answers: dict = {}
    # Every value of every series.
    if len(got) != len(SERIES):
        fail(f"get-batch returned {len(got)} traces, want {len(SERIES)}")
    for t in got:
        key = (t["name"], json.dumps(t["context"], sort_keys=True))
        if key not in want:
            fail(f"unexpected trace {key}")
        w_iters, w_values = want[key]
        if t["iters"] != w_iters:
            bad = next((k for k, (a, b) in enumerate(zip(t["iters"], w_iters)) if a != b), min(len(t["iters"]), len(w_iters)))
            fail(f"{key}: steps differ at index {bad} ({len(t['iters'])} steps, want {len(w_iters)})")
        for k, (a, b) in enumerate(zip(t["values"], w_values)):
            if not same(a, b):
                fail(f"{key}: value at step {w_iters[k]} is {a!r}, want {b!r}")
    answers["series"] = sorted(got, key=lambda t: (t["name"], json.dumps(t["context"], sort_keys=True)))

    # run.metrics(): one trace per series, its last value the last logged.
    metrics = run.metrics()
    got_last = {(m["name"], json.dumps(m["context"], sort_keys=True)): m.get("last_value") for m in metrics}
    want_last = {k: v[-1] for k, (_, v) in want.items()}
    if got_last != want_last:
        fail(f"run.metrics() last values {got_last}, want {want_last}")
    answers["metrics"] = sorted(got_last.items())

    # Params, name, tags.
    if run["hparams"] != HPARAMS:
        fail(f"hparams {run['hparams']!r}, want {HPARAMS!r}")
    props = run.props
    if props.get("name") != "sdk run":
        fail(f"name {props.get('name')!r}")
    answers["params"] = run["hparams"]
    answers["name"] = props.get("name")
    answers["tags"] = sorted(run.tags)
    answers["active"] = props.get("active")

    # Search: the run with its params, by query.
    found = repo.query_runs("run.hparams.lr == 0.001 and run.hparams.optimizer.name == 'adam'")
    hashes = [r["hash"] for r in found]
    if hashes != [run_hash]:
        fail(f"run search found {hashes}, want [{run_hash}]")
    if listify(found[0]["params"]["hparams"]) != HPARAMS:
        fail(f"run search params {found[0]['params']!r}")
    if repo.query_runs("run.hparams.lr == 0.5"):
        fail("run search matched a query that should match nothing")
    found = repo.query_metrics("metric.name == 'loss'")
    names = sorted(
        (tr["name"], json.dumps(tr["context"], sort_keys=True))
        for r in found
        if r["hash"] == run_hash
        for tr in listify(r["traces"])
    )
    if names != sorted((m, k) for (m, k) in want if m == "loss"):
        fail(f"metric search traces {names}")
    answers["metric_search"] = names

    if phases >= 1:
        # The text.
        texts = repo.query_texts("")
        got_texts = [
            (tr["name"], listify(tr["values"]), listify(tr["iters"]))
            for r in texts
            if r["hash"] == run_hash
            for tr in listify(r["traces"])
        ]
        notes = [t for t in got_texts if t[0] == "notes"]
        if notes != [("notes", [[{"data": TEXT, "index": 0}]], [0])]:
            fail(f"texts {got_texts!r}")
        answers["texts"] = notes
        # Every one of the many texts (the search samples them), in order.
        resp = run._http._client.post(
            f"/api/v1/rest/runs/{run_hash}/texts/get-batch/",
            params={"record_density": 0, "index_density": 0},
            json=[{"name": "many", "context": {}}],
        )
        resp.raise_for_status()
        tree = fold(_decode_flat_pairs(resp.content))
        many = [v[0]["data"] for v in tree.get("values", [])]
        if many != [many_text(i) for i in range(MANY_TEXTS)] or tree.get("iters") != list(range(MANY_TEXTS)):
            fail(f"texts get-batch: {len(many)} texts, iters {str(tree.get('iters'))[:200]}")
        answers["many_texts"] = len(many)

        # Log records, every field (the SDK's own decoder merges nested fields shallowly and loses
        # logger_info[0], so fold the stream here).
        resp = run._http._client.get(f"/api/v1/rest/runs/{run_hash}/log-records/")
        resp.raise_for_status()
        tree = fold(_decode_flat_pairs(resp.content))
        if tree.get("log_records_count") != len(RECORDS):
            fail(f"log_records_count {tree.get('log_records_count')}")
        names = {10: "DEBUG", 20: "INFO", 30: "WARNING", 40: "ERROR"}
        got_records = []
        for idx, (level, msg, extra) in enumerate(RECORDS):
            rec = tree.get(idx)
            if not isinstance(rec, dict):
                fail(f"log record {idx} missing: {tree!r}")
            if rec.get("message") != msg or rec.get("log_level") != names[level] or rec.get("args") != extra:
                fail(f"log record {idx} is {rec!r}, want {msg!r} {names[level]} {extra!r}")
            info = rec.get("logger_info")
            if not (isinstance(info, list) and len(info) == 2 and info[0].endswith("sdk_run.py") and isinstance(info[1], int)):
                fail(f"log record {idx} logger_info {info!r}")
            if not isinstance(rec.get("timestamp"), float):
                fail(f"log record {idx} timestamp {rec.get('timestamp')!r}")
            got_records.append({k: rec[k] for k in ("message", "log_level", "args")})
        answers["log_records"] = got_records

        # Terminal lines: the printed lines, in order; the capture adds only empty lines.
        logs = run._http.get_run_logs(run_hash)
        lines = [line for _, line in sorted(logs)]
        if terminal:
            printed = [line for line in lines if line]
            if printed != TERMINAL:
                fail(f"terminal lines {lines!r}, want {TERMINAL!r} (and empty lines)")
        elif lines:
            fail(f"terminal lines {lines!r} with capture off")
        answers["terminal"] = [line for line in lines if line]

    if image:
        images = repo.query_images("")
        trs = [tr for r in images if r["hash"] == run_hash for tr in listify(r["traces"])]
        if [tr["name"] for tr in trs] != ["img"]:
            fail(f"image traces {trs!r}")
        (obj,) = listify(trs[0]["values"])[0]
        if obj.get("caption") != "tiny" or obj.get("format") != "PNG":
            fail(f"image object {obj!r}")
        blobs = run._http.get_blob_batch("images", [obj["blob_uri"]])
        if blobs.get(obj["blob_uri"]) != png_bytes():
            fail(f"image bytes read through images/get-batch differ: {blobs!r}")
        if data_dir:
            stored = Path(data_dir, "blobs", run_hash, "seq", "img", "0.png").read_bytes()
            if stored != png_bytes():
                fail("the stored image blob differs from the uploaded bytes")
        answers["image"] = {k: obj[k] for k in ("caption", "format")}

    print(json.dumps({"ok": True, "points": total, "answers": answers}, sort_keys=True))


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("mode", choices=["log", "check", "shape"])
    p.add_argument("--run", required=True)
    p.add_argument("--phase", type=int, default=1)
    p.add_argument("--phases", type=int, default=1)
    p.add_argument("--no-image", action="store_true")
    p.add_argument("--no-terminal", action="store_true")
    p.add_argument("--data-dir")
    a = p.parse_args()
    if a.mode == "log":
        log(a.run, a.phase, not a.no_image, not a.no_terminal)
    elif a.mode == "check":
        check(a.run, a.phases, not a.no_image, not a.no_terminal, a.data_dir)
    else:
        shape(a.run)


if __name__ == "__main__":
    main()
