"""Times the `fer` package (TensorFlow) on a folder of photos, for `bench/predict_speed.py` to compare against.

    PYTHON_WITH_FER bench/fer_worker.py FOLDER [--threads N]

Runs in whatever Python has `fer` and TensorFlow installed (ferlab's own environment need not have them):
imports nothing from ferlab. Reads each photo with OpenCV, as fer's own examples do, calls
`FER().detect_emotions` (its default Haar face detector) on every photo, `--rounds` times, and prints one JSON
line: the median seconds of a round (and each round's), images, and per photo the boxes found.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import time
from pathlib import Path

EXTS = {".jpg", ".jpeg", ".png", ".bmp", ".webp"}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("folder")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--rounds", type=int, default=5, help="passes over the folder; the median one is reported")
    a = ap.parse_args()
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    import cv2
    import tensorflow as tf
    tf.config.threading.set_intra_op_parallelism_threads(a.threads)
    tf.config.threading.set_inter_op_parallelism_threads(a.threads)
    cv2.setNumThreads(a.threads)
    from fer.fer import FER
    detector = FER()
    photos = sorted(p for p in Path(a.folder).rglob("*") if p.suffix.lower() in EXTS)
    detector.detect_emotions(cv2.imread(str(photos[0])))  # warm-up, as ferlab's side gets
    rounds = []
    for _ in range(a.rounds):
        boxes = []
        t = time.perf_counter()
        for p in photos:
            found = detector.detect_emotions(cv2.imread(str(p)))
            boxes.append([[int(v) for v in f["box"]] for f in found])
        rounds.append(time.perf_counter() - t)
    print(json.dumps({"s": statistics.median(rounds), "rounds": rounds, "images": len(photos), "boxes": boxes,
                      "fer": __import__("fer").__version__, "tensorflow": tf.__version__}))


if __name__ == "__main__":
    main()
