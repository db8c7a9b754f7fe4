"""Accuracy of exported models against their checkpoint, on FER2013's PublicTest and PrivateTest splits.

    ferlab export default -o /tmp/default.onnx --data $FERLAB_DATA
    ferlab export default -o /tmp/default.int8.onnx --data $FERLAB_DATA --int8
    python bench/onnx_accuracy.py --data $FERLAB_DATA default /tmp/default.onnx /tmp/default.int8.onnx

Each model (a run folder, .pt, "default" or .onnx) classifies the official test splits' 48x48 faces through
`Predictor.predict_crops` (the path `ferlab predict --detector none` takes), plain and with flip TTA; printed
as a Markdown table with the share of faces whose flip-TTA label is the first model's. Nothing is tuned here.
"""
from __future__ import annotations

import argparse

import numpy as np

from ferlab.data import load_fer2013
from ferlab.data.readers import USAGES
from ferlab.inference.predictor import Predictor


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("models", nargs="+", help="run folders, .pt, 'default' or .onnx files; the first is the reference")
    ap.add_argument("--data", help="FER2013 (default: $FERLAB_DATA)")
    a = ap.parse_args()
    fer = load_fer2013(a.data)
    splits = {name: fer.usage == USAGES.index(name) for name in ("PublicTest", "PrivateTest")}
    print("| model | split | faces | accuracy | flip TTA | same label as the first (flip TTA) |")
    print("|---|---|---:|---:|---:|---:|")
    first: dict[str, np.ndarray] = {}
    for model in a.models:
        for name, sel in splits.items():
            crops, labels = list(fer.images[sel]), fer.labels[sel]
            plain = Predictor(model, detector="none", tta=False, batch_size=256).predict_crops(crops).argmax(1)
            tta = Predictor(model, detector="none", tta=True, batch_size=256).predict_crops(crops).argmax(1)
            same = first.setdefault(name, tta)
            print(f"| {model} | {name} | {len(labels)} | {100 * (plain == labels).mean():.2f}% | "
                  f"{100 * (tta == labels).mean():.2f}% | {100 * (tta == same).mean():.2f}% |", flush=True)


if __name__ == "__main__":
    main()
