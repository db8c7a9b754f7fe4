"""Crop + grayscale (+ turning a tilted face upright), the half of preprocessing before `to_model_input`.

Prediction, export checks and serving turn pictures into model input only through `image_to_input`
(or `crops_to_input` for crops already cut), so they see faces exactly as training-time evaluation does.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from PIL import Image

from ..data.images import rgb_to_gray, to_8bit, to_array
from .preprocess import Preprocess, to_model_input, to_model_pixels


# Face.landmarks' names, in its order. Left and right as the picture shows them: "left_eye" is the eye on the
# picture's left (the person's right eye, in a photo of a face turned to the camera)
LANDMARKS = ("left_eye", "right_eye", "nose", "mouth_left", "mouth_right")


@dataclass(frozen=True)
class Face:
    box: tuple[int, int, int, int]  # x, y, w, h in pixels of the input image
    score: float
    # (x, y) of the eye on the image's left, the other eye, the nose, the mouth's left and right corners
    # (MTCNN's five), in pixels of the input image; None from detectors without landmarks
    landmarks: tuple[tuple[float, float], ...] | None = None


def to_gray(image) -> np.ndarray:
    """An image as uint8 (H, W) grayscale: numpy RGB (H, W, 3), RGBA, gray (H, W), or a PIL image.

    Colour goes through PIL's convert("L") (ITU-R 601 luma), the conversion that decoded FER2013's JPEGs.
    """
    if isinstance(image, Image.Image):
        return to_array(to_8bit(image).convert("L"))
    a = np.asarray(image)
    if a.dtype != np.uint8:
        raise ValueError(f"expected a uint8 image, got dtype {a.dtype}")
    if a.ndim == 3 and a.shape[2] == 1:
        a = a[..., 0]
    if a.ndim == 2:
        return np.ascontiguousarray(a)
    if a.ndim == 3 and a.shape[2] in (3, 4):
        return rgb_to_gray(a[..., :3])
    raise ValueError(f"expected an image of shape (H, W), (H, W, 3) RGB or (H, W, 4) RGBA, got {a.shape}")


def square_box(box, margin: float, width: int, height: int) -> tuple[int, int, int, int]:
    """Grow `box` by `margin` of its size on every side, make it square about its centre, keep it inside."""
    x, y, w, h = box
    side = min(round(max(w, h) * (1 + 2 * margin)), width, height)
    cx, cy = x + w / 2, y + h / 2
    nx = int(np.clip(round(cx - side / 2), 0, width - side))
    ny = int(np.clip(round(cy - side / 2), 0, height - side))
    return nx, ny, side, side


def crop_faces(gray: np.ndarray, faces: list[Face], align: bool = False) -> list[np.ndarray]:
    """The (h, w) uint8 crops of `faces` from a grayscale image, in order (copies: a crop waiting for
    its batch must not keep a whole video frame alive). With `align`, a face with landmarks is first turned
    about its box centre so that its eyes are level, as in FER2013's roughly upright crops."""
    return [_upright_crop(gray, f) if align and f.landmarks is not None else
            gray[f.box[1]:f.box[1] + f.box[3], f.box[0]:f.box[0] + f.box[2]].copy() for f in faces]


def crop_faces_from(image: np.ndarray, faces: list[Face], align: bool = False) -> list[np.ndarray]:
    """`crop_faces(to_gray(image), faces, align)`, greying only the pixels each crop reads: the box or, to be
    turned upright, the square about its centre that holds it turned any way (half its diagonal from the
    centre, plus the pixels bilinear sampling reads beyond), cut at the picture's edges, where the upright crop
    repeats the edge as it does from the whole picture. The same crops, for a fraction of the work on a large
    frame with a small face."""
    image = np.asarray(image)
    h, w = image.shape[:2]
    out = []
    for f in faces:
        x, y, bw, bh = f.box
        reach = int(np.ceil(max(bw, bh) * 0.2072)) + 2 if align and f.landmarks is not None else 0
        x0, y0 = max(0, x - reach), max(0, y - reach)
        x1, y1 = min(w, x + bw + reach), min(h, y + bh + reach)
        moved = Face((x - x0, y - y0, bw, bh), f.score,
                     None if f.landmarks is None else tuple((px - x0, py - y0) for px, py in f.landmarks))
        out += crop_faces(to_gray(image[y0:y1, x0:x1]), [moved], align)
    return out


def eye_angle(face: Face) -> float:
    """Degrees the line from the image-left eye to the other eye dips below horizontal (y grows downwards)."""
    (lx, ly), (rx, ry) = face.landmarks[:2]
    return float(np.degrees(np.arctan2(ry - ly, rx - lx)))


def _upright_crop(gray: np.ndarray, face: Face) -> np.ndarray:
    """The face's box cut from the picture turned by `eye_angle` about the box centre (one bilinear warp of
    the box only; pixels beyond the picture repeat its edge, as FER2013's padded faces do)."""
    import cv2
    x, y, w, h = face.box
    m = cv2.getRotationMatrix2D((x + w / 2, y + h / 2), eye_angle(face), 1.0)
    m[:, 2] -= (x, y)  # output pixel (0, 0) is the box's corner
    return cv2.warpAffine(gray, m, (w, h), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)


def crops_to_input(crops: list[np.ndarray], pre: Preprocess, device=None) -> torch.Tensor:
    """Face crops of any sizes -> model input (N, C, S, S) through `to_model_input`, one crop at a time
    (crops differ in size, and each is resized exactly as a single face would be)."""
    if not crops:
        return torch.empty(0, pre.in_channels, pre.input_size, pre.input_size, device=device)
    return torch.cat([to_model_input(c[None], pre, device) for c in crops])


def crops_to_pixels(crops: list[np.ndarray], pre: Preprocess) -> torch.Tensor:
    """Face crops of any sizes -> uint8 (N, S, S) through `to_model_pixels`, for a model (an ONNX export)
    that holds the rest of the preprocessing itself."""
    if not crops:
        return torch.empty(0, pre.input_size, pre.input_size, dtype=torch.uint8)
    return torch.cat([to_model_pixels(c[None], pre) for c in crops])


def image_to_input(image, faces: list[Face], pre: Preprocess, device=None, align: bool = False) -> torch.Tensor:
    """The one path from a picture to the network: grayscale -> face crops (turned upright with `align`)
    -> resize -> normalise."""
    return crops_to_input(crop_faces(to_gray(image), faces, align), pre, device)
