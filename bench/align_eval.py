"""Does turning faces upright by their eyes help? FER2013 PrivateTest faces, rotated by known angles and
pasted into larger frames, classified by a model after MTCNN finds them, without and with alignment.

    python bench/align_eval.py --data /path/to/fer2013 [--model default] [--n 500] [--threads 1]

Each face (48 px) is upscaled 3x, padded with its own border to a 288x288 frame and turned by the angle
about the frame centre (border repeated, so no black corners give the rotation away). MTCNN looks for it
(the face nearest the frame centre is taken); the same detection is then cropped plain (an upright box
around a tilted face) and aligned (the frame turned about the box centre by the eye angle first), and both
crops go through the model's preprocessing and flip TTA, as `ferlab predict` does. Prints a Markdown table:
per angle, faces found, accuracy without and with alignment on the faces found, and the model's accuracy
on the same faces' original 48x48 crops (no detection) for reference.
"""
from __future__ import annotations

import argparse
import time

import cv2
import numpy as np
import torch

from ferlab.data import load_fer2013
from ferlab.data.readers import USAGES
from ferlab.inference.faces import crop_faces
from ferlab.inference.predictor import Predictor


def frame(face: np.ndarray, angle: float, up: int = 3) -> np.ndarray:
    """The face upscaled, padded with its border to twice its side, turned by `angle` degrees (CCW)."""
    big = cv2.resize(face, None, fx=up, fy=up, interpolation=cv2.INTER_CUBIC)
    s = big.shape[0]
    pad = cv2.copyMakeBorder(big, s // 2, s // 2, s // 2, s // 2, cv2.BORDER_REPLICATE)
    m = cv2.getRotationMatrix2D((pad.shape[1] / 2, pad.shape[0] / 2), angle, 1.0)
    return cv2.warpAffine(pad, m, pad.shape[::-1], flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", help="FER2013 (default: $FERLAB_DATA)")
    ap.add_argument("--model", default="default")
    ap.add_argument("--n", type=int, default=500, help="PrivateTest faces, spread evenly (default: 500)")
    ap.add_argument("--angles", default="0,10,-10,20,-20,30,-30")
    ap.add_argument("--threads", type=int, default=1)
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    data = load_fer2013(a.data)
    idx = np.flatnonzero(data.usage == USAGES.index("PrivateTest"))
    idx = idx[np.linspace(0, len(idx) - 1, min(a.n, len(idx))).astype(int)]
    faces, labels = data.images[idx], data.labels[idx].astype(int)
    pred = Predictor(a.model, detector="mtcnn", min_face=40)
    base = pred.predict_crops(list(faces)).argmax(1) == labels
    print(f"model {a.model}, {len(faces)} PrivateTest faces, {a.threads} thread(s)\n")
    print("| angle | faces found | accuracy, plain crop | accuracy, aligned | original crops, same faces | "
          "median eye angle found |")
    print("|---:|---:|---:|---:|---:|---:|")
    totals = np.zeros(4)
    t0 = time.perf_counter()
    for angle in (float(x) for x in a.angles.split(",")):
        plain, aligned, found, tilt = [], [], [], []
        for k, f in enumerate(faces):
            img = frame(f, angle)
            c = img.shape[0] / 2
            dets = pred.detector(img)
            near = [d for d in dets if abs(d.box[0] + d.box[2] / 2 - c) < c / 3 and abs(d.box[1] + d.box[3] / 2 - c) < c / 3]
            if not near:
                continue
            d = max(near, key=lambda d: d.score)
            found.append(k)
            plain += crop_faces(img, [d])
            aligned += crop_faces(img, [d], align=True)
            (lx, ly), (rx, ry) = d.landmarks[:2]
            tilt.append(np.degrees(np.arctan2(ry - ly, rx - lx)))
        found = np.array(found, int)
        acc_p = (pred.predict_crops(plain).argmax(1) == labels[found]).mean()
        acc_a = (pred.predict_crops(aligned).argmax(1) == labels[found]).mean()
        acc_o = base[found].mean()
        totals += (len(found), acc_p * len(found), acc_a * len(found), acc_o * len(found))
        print(f"| {angle:+.0f} | {len(found)} / {len(faces)} | {100 * acc_p:.1f}% | {100 * acc_a:.1f}% | "
              f"{100 * acc_o:.1f}% | {np.median(tilt):+.1f} |", flush=True)
    n = totals[0]
    print(f"| all | {n:.0f} | {100 * totals[1] / n:.1f}% | {100 * totals[2] / n:.1f}% | {100 * totals[3] / n:.1f}% | |")
    print(f"\n{time.perf_counter() - t0:.0f} s")


if __name__ == "__main__":
    main()
