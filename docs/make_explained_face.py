"""Draws docs/explained-face.png: `ferlab explain` on a face drawn by this script.

    python docs/make_explained_face.py

No photo of a person (nor any FER2013 face) may be committed to this repository, so the README's picture of an
explained face uses a face drawn here from ellipses and Gaussian shading. MTCNN finds it (score 0.997) and the
shipped model labels it; the heat map shows which regions drove that label.
"""
from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
from PIL import Image

import ferlab
from ferlab.inference.explain import draw_explained


def drawn_face(size: int = 400) -> np.ndarray:
    """An RGB uint8 (size, size, 3) picture of a smiling face: shaded skin (darker eye sockets, sides of the
    nose, under the nose and lip), hair, eyes, brows, nostrils and an open smile with teeth."""
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32)
    c = size / 2
    img = np.zeros((size, size, 3), np.float32) + np.array([200, 210, 222], np.float32)
    head = ((xx - c) / 118) ** 2 + ((yy - c - 10) / 150) ** 2

    def blob(x0, y0, sx, sy):
        return np.exp(-(((xx - x0) / sx) ** 2 + ((yy - y0) / sy) ** 2) / 2)

    shade = np.clip(1.05 - 0.6 * head ** 2, 0.45, 1.05)  # rounder: darker towards the edge
    for dx in (-48, 48):
        shade -= 0.3 * blob(c + dx, c - 22, 30, 20) + 0.12 * blob(c + dx * 0.35, c + 20, 10, 30)
    shade -= 0.25 * blob(c, c + 45, 26, 10) + 0.15 * blob(c, c + 115, 40, 10)
    skin = np.array([228, 182, 152], np.float32) * shade[..., None]
    img[head < 1] = skin[head < 1]
    img = np.clip(img, 0, 255).astype(np.uint8)
    ci = int(c)
    cv2.ellipse(img, (ci, ci - 118), (122, 72), 0, 180, 360, (60, 42, 32), -1, cv2.LINE_AA)
    for dx in (-48, 48):
        cv2.ellipse(img, (ci + dx, ci - 22), (22, 11), 0, 0, 360, (235, 232, 228), -1, cv2.LINE_AA)
        cv2.circle(img, (ci + dx, ci - 22), 10, (70, 45, 30), -1, cv2.LINE_AA)
        cv2.circle(img, (ci + dx, ci - 22), 4, (10, 10, 10), -1, cv2.LINE_AA)
        cv2.ellipse(img, (ci + dx, ci - 52), (34, 12), 0, 200, 340, (50, 35, 28), 7, cv2.LINE_AA)
    for dx in (-12, 12):
        cv2.ellipse(img, (ci + dx, ci + 40), (7, 4), 0, 0, 360, (110, 70, 60), -1, cv2.LINE_AA)
    cv2.ellipse(img, (ci, ci + 72), (50, 30), 0, 0, 180, (120, 35, 40), -1, cv2.LINE_AA)
    cv2.rectangle(img, (ci - 40, ci + 72), (ci + 40, ci + 82), (240, 238, 232), -1)
    return cv2.GaussianBlur(img, (7, 7), 0)


def main() -> None:
    img = drawn_face()
    faces = ferlab.Predictor("default").explain(img)
    for f in faces:
        top = sorted(f["probs"].items(), key=lambda kv: -kv[1])[:3]
        print(f"face {f['box']} score {f['score']:.3f}: " + ", ".join(f"{k} {v:.2f}" for k, v in top))
    out = Path(__file__).with_name("explained-face.png")
    Image.fromarray(np.concatenate([img, draw_explained(img, faces)], 1)).save(out, optimize=True)
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
