"""ferlab's PyTorch MTCNN against the reference: the `mtcnn` package's own TensorFlow detector, same weights.

    python -m venv /tmp/tfref && /tmp/tfref/bin/pip install tensorflow-cpu mtcnn
    python bench/mtcnn_parity.py --reference-python /tmp/tfref/bin/python --data /path/to/fer2013

TensorFlow is not a ferlab dependency, so the reference runs in that separate interpreter: this script
writes the test pictures as .npy files, runs itself there with --reference (which imports only numpy and
mtcnn), and compares. Pictures: skimage's astronaut (RGB) and camera (grey) photos, and frames of real
FER2013 PrivateTest faces (upscaled, some turned by known angles) pasted on skimage's coffee photo.
Both detectors get the same RGB pixels and the reference's defaults (min face 20, thresholds 0.6/0.7/0.8).
Faces are matched by IoU; printed per picture and overall: faces each found, matched, box IoU, landmark
error in pixels and as a share of the box side, and the score difference.
"""
from __future__ import annotations

import argparse
import json
import subprocess
import tempfile
from pathlib import Path

import numpy as np


def reference(folder: Path) -> None:
    """Run in the TensorFlow interpreter: the mtcnn package on every .npy picture -> reference.json."""
    from mtcnn import MTCNN
    det = MTCNN()
    out = {}
    for f in sorted(folder.glob("*.npy")):
        res = det.detect_faces(np.load(f), min_face_size=20)
        out[f.stem] = [{"box": [float(v) for v in r["box"]], "score": float(r["confidence"]),
                        "landmarks": [[float(v) for v in r["keypoints"][k]] for k in
                                      ("left_eye", "right_eye", "nose", "mouth_left", "mouth_right")]} for r in res]
    (folder / "reference.json").write_text(json.dumps(out))


def pictures(data: str | None, n_frames: int = 6) -> dict[str, np.ndarray]:
    import cv2
    from skimage import data as skdata

    from ferlab.data import load_fer2013
    from ferlab.data.readers import USAGES
    pics = {"astronaut": skdata.astronaut(), "camera": np.repeat(skdata.camera()[..., None], 3, -1)}
    fer = load_fer2013(data)
    test = np.flatnonzero(fer.usage == USAGES.index("PrivateTest"))
    rng = np.random.default_rng(0)
    bg = cv2.resize(skdata.coffee(), (640, 480), interpolation=cv2.INTER_AREA)
    for i in range(n_frames):
        img = bg.copy()
        for j, (x, y) in enumerate(((30, 40), (250, 60), (460, 30), (120, 280), (380, 270))):
            face = fer.images[rng.choice(test)]
            side = int(rng.integers(90, 150))
            big = cv2.resize(face, (side, side), interpolation=cv2.INTER_CUBIC)
            angle = (0, 0, 15, -20, 25)[j] if i % 2 else 0
            if angle:
                m = cv2.getRotationMatrix2D((side / 2, side / 2), angle, 1.0)
                big = cv2.warpAffine(big, m, (side, side), borderMode=cv2.BORDER_REPLICATE)
            img[y:y + side, x:x + side] = big[..., None]
        pics[f"fer_frame_{i}"] = img
    return pics


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--reference", help=argparse.SUPPRESS)  # internal: run the reference on this folder
    ap.add_argument("--reference-python", help="a Python with tensorflow and mtcnn installed")
    ap.add_argument("--data", help="FER2013 (default: $FERLAB_DATA)")
    ap.add_argument("--threads", type=int, default=1)
    a = ap.parse_args()
    if a.reference:
        reference(Path(a.reference))
        return
    import torch

    from ferlab.inference.mtcnn import Mtcnn
    from ferlab.inference.video import iou
    torch.set_num_threads(a.threads)
    folder = Path(tempfile.mkdtemp(prefix="ferlab-mtcnn-parity-"))
    pics = pictures(a.data)
    for name, img in pics.items():
        np.save(folder / f"{name}.npy", img)
    subprocess.run([a.reference_python, __file__, "--reference", str(folder)], check=True)
    ref = json.loads((folder / "reference.json").read_text())
    ours_net = Mtcnn(min_face=20)
    print("| picture | reference faces | ferlab faces | matched | min box IoU | max landmark error px | "
          "max landmark error / box side | max score diff |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|")
    ious, errs, rel, dscore, n_ref, n_ours, n_match = [], [], [], [], 0, 0, 0
    for name, img in pics.items():
        r = ours_net(img)
        ours = [{"box": [b[0], b[1], b[2] - b[0], b[3] - b[1]], "score": s, "landmarks": lm}
                for b, s, lm in zip(r["boxes"], r["scores"], r["landmarks"])]
        p_iou, p_err, p_rel, p_ds, matched = [], [], [], [], 0
        for rf in ref[name]:
            best = max(ours, key=lambda o: iou(o["box"], rf["box"]), default=None)
            if best is None or iou(best["box"], rf["box"]) < 0.5:
                continue
            matched += 1
            p_iou.append(iou(best["box"], rf["box"]))
            e = np.linalg.norm(np.asarray(best["landmarks"]) - np.asarray(rf["landmarks"]), axis=1).max()
            p_err.append(e)
            p_rel.append(e / max(rf["box"][2], rf["box"][3]))
            p_ds.append(abs(best["score"] - rf["score"]))
        n_ref, n_ours, n_match = n_ref + len(ref[name]), n_ours + len(ours), n_match + matched
        ious += p_iou
        errs += p_err
        rel += p_rel
        dscore += p_ds
        fmt = (lambda v, f: f(v) if v else "-")
        print(f"| {name} | {len(ref[name])} | {len(ours)} | {matched} | {fmt(p_iou, lambda v: f'{min(v):.3f}')} | "
              f"{fmt(p_err, lambda v: f'{max(v):.1f}')} | {fmt(p_rel, lambda v: f'{max(v):.3f}')} | "
              f"{fmt(p_ds, lambda v: f'{max(v):.4f}')} |", flush=True)
    print(f"| all | {n_ref} | {n_ours} | {n_match} | {min(ious):.3f} (median {np.median(ious):.3f}) | "
          f"{max(errs):.1f} (median {np.median(errs):.1f}) | {max(rel):.3f} | {max(dscore):.4f} |")


if __name__ == "__main__":
    main()
