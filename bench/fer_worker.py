"""Times the `fer` package (TensorFlow) on folders of photos, for `bench/predict_speed.py` to compare against.

    PYTHON_WITH_FER bench/fer_worker.py FOLDER [--threads N] [--rounds R]
    PYTHON_WITH_FER bench/fer_worker.py --stdin [--threads N]

Runs in whatever Python has `fer` and TensorFlow installed (ferlab's own environment need not have them):
imports nothing from ferlab. Reads each photo with OpenCV, as fer's own examples do, and calls
`FER().detect_emotions` (its default Haar face detector) on every photo, one call per photo (fer has no batch
call). With a FOLDER: `--rounds` passes over it, then one JSON line: the median seconds of a pass (and each
pass's), the median CPU seconds of a pass, images, and per photo the boxes found. With `--stdin`: one pass over
each folder named on standard input, one JSON line each, so that the caller can interleave fer's passes with
its own (on a shared machine both sides then see the same load); "ready" is printed once TensorFlow is up.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path

EXTS = {".jpg", ".jpeg", ".png", ".bmp", ".webp"}


def one_pass(detector, photos, cv2) -> dict:
    """Seconds (wall and CPU) of `detect_emotions` over `photos`, each read with OpenCV, and the boxes."""
    boxes = []
    t, c = time.perf_counter(), time.process_time()
    for p in photos:
        found = detector.detect_emotions(cv2.imread(str(p)))
        boxes.append([[int(v) for v in f["box"]] for f in found])
    return {"s": time.perf_counter() - t, "cpu_s": time.process_time() - c, "boxes": boxes}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("folder", nargs="?")
    ap.add_argument("--stdin", action="store_true", help="one pass over each folder read from standard input")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--rounds", type=int, default=5, help="passes over the folder; the median one is reported")
    a = ap.parse_args()
    if not a.stdin and not a.folder:
        ap.error("give a FOLDER or --stdin")
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    import cv2
    import tensorflow as tf
    tf.config.threading.set_intra_op_parallelism_threads(a.threads)
    tf.config.threading.set_inter_op_parallelism_threads(a.threads)
    cv2.setNumThreads(a.threads)
    from fer.fer import FER
    detector = FER()
    info = {"fer": __import__("fer").__version__, "tensorflow": tf.__version__}
    warmed: set[str] = set()

    def photos_of(folder: str) -> list[Path]:
        photos = sorted(p for p in Path(folder).rglob("*") if p.suffix.lower() in EXTS)
        if folder not in warmed:  # warm-up, as ferlab's side gets
            detector.detect_emotions(cv2.imread(str(photos[0])))
            warmed.add(folder)
        return photos

    if a.stdin:
        print("ready", flush=True)
        for line in sys.stdin:
            photos = photos_of(line.strip())
            print(json.dumps({**one_pass(detector, photos, cv2), "images": len(photos), **info}), flush=True)
        return
    photos = photos_of(a.folder)
    rounds = [one_pass(detector, photos, cv2) for _ in range(a.rounds)]
    print(json.dumps({"s": statistics.median(r["s"] for r in rounds), "rounds": [r["s"] for r in rounds],
                      "cpu_s": statistics.median(r["cpu_s"] for r in rounds), "images": len(photos),
                      "boxes": rounds[-1]["boxes"], **info}))


if __name__ == "__main__":
    main()
