"""How the int8 export's activation ranges are calibrated, compared on PublicTest.

    python bench/int8_calibration.py --data $FERLAB_DATA default runs/vgg_s_cpu48

Each model (a run folder, .pt or "default") is exported to float ONNX once, then quantized by
`ferlab.inference.onnx.quantize_int8` with its ranges from the same 1,024 Training faces the export uses, taken
as the extremes (min-max) or as a percentile of the values seen. For each, the share of PublicTest faces (plain,
no TTA) whose int8 label is the PyTorch model's, its accuracy, and the same share on the export's 64 drawn
synthetic faces. PublicTest only: this is how the export's calibration was chosen, PrivateTest is not read.
"""
from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import torch

from ferlab.data import USAGES, load_fer2013
from ferlab.engine.checkpoint import load_checkpoint, model_from_checkpoint
from ferlab.engine.predict import predict_probs
from ferlab.inference import onnx as fo
from ferlab.inference.preprocess import to_model_pixels


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("models", nargs="+", help="run folders, .pt files or 'default'")
    ap.add_argument("--data", help="FER2013 (default: $FERLAB_DATA)")
    ap.add_argument("--percentiles", default="none,99.99,99.999",
                    help="comma-separated: 'none' (min-max ranges) or a percentile (default: none,99.99,99.999)")
    a = ap.parse_args()
    fer = load_fer2013(a.data)
    choices = [None if c == "none" else float(c) for c in a.percentiles.split(",")]
    print("| model | ranges | PublicTest: same label as PyTorch | int8 accuracy (PyTorch) "
          "| synthetic faces: same label |")
    print("|---|---|---:|---:|---:|")
    with tempfile.TemporaryDirectory() as tmp:
        for name in a.models:
            model, pre = model_from_checkpoint(load_checkpoint(name))
            float_onnx = Path(tmp) / "float.onnx"
            fo.export_onnx(name, float_onnx, data=a.data)
            calib = fo.calibration_faces(fer, pre)
            public = fer.usage == USAGES.index("PublicTest")
            checks = {fo.REAL: to_model_pixels(fer.images[public], pre).numpy(),
                      "synthetic": fo.synthetic_faces(64, pre.input_size)}
            want = {k: predict_probs(model, torch.from_numpy(v), pre, torch.device("cpu")).numpy()
                    for k, v in checks.items()}
            torch_acc = 100 * (want[fo.REAL].argmax(1) == fer.labels[public]).mean()
            for p in choices:
                out = Path(tmp) / "int8.onnx"
                report = fo.quantize_int8(float_onnx, out, calib, checks, want, percentile=p)
                got = fo.OnnxClassifier(out)(checks[fo.REAL]).argmax(1)
                agree = report["label_agreement"]
                print(f"| {name} | {'min-max' if p is None else f'percentile {p}'} | {100 * agree[fo.REAL]:.2f}% | "
                      f"{100 * (got == fer.labels[public]).mean():.2f}% ({torch_acc:.2f}%) | "
                      f"{100 * agree['synthetic']:.1f}% |", flush=True)


if __name__ == "__main__":
    main()
