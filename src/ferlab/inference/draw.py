"""Faces drawn on a picture: each face's box, its label and probability (and, if asked, its five landmarks).

`draw_faces` is `ferlab.draw`: it takes the faces `Predictor.predict` returns and gives a new picture, the
input left as it was. `ferlab predict --save` and `ferlab explain` draw through it, so a saved copy, an
explained face and a script's own drawing look alike.
"""
from __future__ import annotations

import numpy as np

BOX_RGB = (255, 64, 0)      # orange boxes and label backgrounds
TEXT_RGB = (255, 255, 255)
LANDMARK_RGB = (0, 230, 255)


def draw_faces(image, faces: list[dict], color: str = "rgb", landmarks: bool = False) -> np.ndarray:
    """A copy of `image` with each face's box, label and probability drawn on it; `image` is not changed.

    image: uint8 (H, W, 3) RGB (or BGR, as OpenCV gives it, with `color="bgr"`: the copy is BGR too), (H, W)
    gray or (H, W, 4) RGBA (both give RGB), or a PIL image. faces: as `Predictor.predict` (or `explain`)
    returns them for this picture: "box", "label" and "probs" are drawn, "track" (videos) before the label.
    landmarks: also mark each face's five landmarks where it has them (MTCNN's faces).
    """
    import cv2
    if color not in ("rgb", "bgr"):
        raise ValueError(f"color must be 'rgb' or 'bgr' (the channel order of `image`), got {color!r}")
    a = np.asarray(image)
    if a.dtype != np.uint8 or not (a.ndim == 2 or (a.ndim == 3 and a.shape[2] in (1, 3, 4))):
        raise ValueError(f"expected a uint8 picture of shape (H, W), (H, W, 3) or (H, W, 4), got {a.dtype} "
                         f"{a.shape}")
    if a.ndim == 3 and a.shape[2] == 1:
        a = a[..., 0]
    out = np.ascontiguousarray(np.stack([a] * 3, -1) if a.ndim == 2 else a[..., :3]).copy()
    if color == "bgr":
        out = np.ascontiguousarray(out[..., ::-1])  # drawn in RGB, given back in the caller's order
    thick = max(1, round(max(out.shape[:2]) / 400))
    for f in faces:
        x, y, w, h = (int(round(float(v))) for v in f["box"])
        cv2.rectangle(out, (x, y), (x + w, y + h), BOX_RGB, thick)
        text = (f"#{f['track']} " if f.get("track") is not None else "") + f"{f['label']} {f['probs'][f['label']]:.2f}"
        scale = max(0.4, w / 250)
        (tw, th), base = cv2.getTextSize(text, cv2.FONT_HERSHEY_SIMPLEX, scale, thick)
        ty = y - 4 if y - th - base - 4 >= 0 else y + h + th + 4  # below the box when no room above
        cv2.rectangle(out, (x, ty - th - base), (x + tw, ty + base), BOX_RGB, -1)
        cv2.putText(out, text, (x, ty), cv2.FONT_HERSHEY_SIMPLEX, scale, TEXT_RGB, thick, cv2.LINE_AA)
        if landmarks and f.get("landmarks"):
            for px, py in f["landmarks"].values():
                cv2.circle(out, (int(round(px)), int(round(py))), max(2, thick + 1), LANDMARK_RGB, -1, cv2.LINE_AA)
    return np.ascontiguousarray(out[..., ::-1]) if color == "bgr" else out
