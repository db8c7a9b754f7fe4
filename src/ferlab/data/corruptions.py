"""Fixed, seeded corruptions of face crops: what a camera, a codec, light or a hand does to a face.

Every function takes uint8 faces (N, H, W) and a numpy Generator (used only by the random ones) and returns
new uint8 faces of the same shape; the input is never changed. `corrupt(name, faces)` draws a random one from
the corruption's own fixed seed, so the same faces give the same result in every process. Boxes and sizes are
given for FER2013's aligned 48x48 crops and scaled to other sizes.

bench/robustness.py scores models under them; a training config can choose its checkpoint on PublicTest under
some of them (`select_corruptions`).
"""
from __future__ import annotations

import zlib
from collections.abc import Callable

import cv2
import numpy as np

EYES_BOX = (12, 24, 6, 42)    # rows 12-23, columns 6-41 of a 48x48 face: both eyes and the brows' lower edge
MOUTH_BOX = (32, 44, 12, 36)  # rows 32-43, columns 12-35: the mouth, open or closed, and the lips' corners
PATCH_GREY = 128


def _to_uint8(x: np.ndarray) -> np.ndarray:
    return np.clip(np.rint(x), 0, 255).astype(np.uint8)


def clean(faces: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """The faces as they are (a copy)."""
    return faces.copy()


def gaussian_blur(faces: np.ndarray, rng: np.random.Generator, sigma: float = 1.0) -> np.ndarray:
    """Gaussian blur of standard deviation `sigma` px (7x7 kernel for sigma 1, border mirrored)."""
    k = 2 * int(np.ceil(3 * sigma)) + 1
    return np.stack([cv2.GaussianBlur(f, (k, k), sigma, borderType=cv2.BORDER_REFLECT_101) for f in faces])


def gaussian_noise(faces: np.ndarray, rng: np.random.Generator, std: float = 10.0) -> np.ndarray:
    """Independent Gaussian noise of `std` grey levels added to every pixel, rounded and clipped to 0-255."""
    return _to_uint8(faces + rng.normal(0.0, std, faces.shape))


def jpeg(faces: np.ndarray, rng: np.random.Generator, quality: int = 20) -> np.ndarray:
    """Each face encoded as a greyscale JPEG of `quality` (OpenCV's libjpeg) and decoded again."""
    out = []
    for f in faces:
        ok, buf = cv2.imencode(".jpg", np.ascontiguousarray(f), [cv2.IMWRITE_JPEG_QUALITY, quality])
        if not ok:
            raise RuntimeError("OpenCV could not encode a JPEG")
        out.append(cv2.imdecode(buf, cv2.IMREAD_GRAYSCALE))
    return np.stack(out)


def low_contrast(faces: np.ndarray, rng: np.random.Generator, factor: float = 0.5) -> np.ndarray:
    """Contrast scaled by `factor` about each face's own mean grey level (its mean stays, its spread halves)."""
    x = faces.astype(np.float64)
    m = x.mean(axis=(1, 2), keepdims=True)
    return _to_uint8(m + factor * (x - m))


def dark(faces: np.ndarray, rng: np.random.Generator, factor: float = 0.5) -> np.ndarray:
    """Brightness scaled by `factor` (every grey level times 0.5: mean and spread both halve)."""
    return _to_uint8(faces * factor)


def dark_gamma(faces: np.ndarray, rng: np.random.Generator, gamma: float = 2.0) -> np.ndarray:
    """Gamma `gamma` on 0-1 grey levels (255 * (x/255)^2: mid grey 128 -> 64 like x0.5, but shadows are
    crushed and highlights kept: not undone by per-face standardisation)."""
    return _to_uint8(255.0 * (faces / 255.0) ** gamma)


def _box(shape: tuple[int, int], box: tuple[int, int, int, int]) -> tuple[slice, slice]:
    h, w = shape
    r0, r1, c0, c1 = box
    return slice(round(r0 * h / 48), round(r1 * h / 48)), slice(round(c0 * w / 48), round(c1 * w / 48))


def patch(faces: np.ndarray, rng: np.random.Generator, box: tuple[int, int, int, int] = EYES_BOX,
          grey: int = PATCH_GREY) -> np.ndarray:
    """A flat grey (128) rectangle over `box` = (row0, row1, col0, col1) of a 48x48 face, end-exclusive."""
    out = faces.copy()
    rows, cols = _box(faces.shape[1:], box)
    out[:, rows, cols] = grey
    return out


def rotate(faces: np.ndarray, rng: np.random.Generator, degrees: float = 15.0) -> np.ndarray:
    """Turned by `degrees` counter-clockwise about the face centre (bilinear); the corners the turn uncovers
    repeat the border, so no black wedges give the rotation away."""
    h, w = faces.shape[1:]
    m = cv2.getRotationMatrix2D(((w - 1) / 2, (h - 1) / 2), degrees, 1.0)
    return np.stack([cv2.warpAffine(f, m, (w, h), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)
                     for f in faces])


def down_up(faces: np.ndarray, rng: np.random.Generator, scale: float = 0.5) -> np.ndarray:
    """Down-scaled to `scale` of the side (area averaging: 48 -> 24 px) and back up (bilinear): detail lost to
    a low-resolution camera or a far-away face."""
    h, w = faces.shape[1:]
    small = (max(1, round(w * scale)), max(1, round(h * scale)))
    return np.stack([cv2.resize(cv2.resize(f, small, interpolation=cv2.INTER_AREA), (w, h),
                                interpolation=cv2.INTER_LINEAR) for f in faces])


def _with(fn, **kw) -> Callable[[np.ndarray, np.random.Generator], np.ndarray]:
    return lambda faces, rng: fn(faces, rng, **kw)


# name -> (row label, function); the table's rows, in this order
CORRUPTIONS: dict[str, tuple[str, Callable[[np.ndarray, np.random.Generator], np.ndarray]]] = {
    "clean": ("clean", clean),
    "blur1": ("Gaussian blur, sigma 1 px", _with(gaussian_blur, sigma=1.0)),
    "noise10": ("Gaussian noise, std 10", _with(gaussian_noise, std=10.0)),
    "noise20": ("Gaussian noise, std 20", _with(gaussian_noise, std=20.0)),
    "jpeg20": ("JPEG quality 20", _with(jpeg, quality=20)),
    "contrast50": ("low contrast (x0.5 about the mean)", _with(low_contrast, factor=0.5)),
    "dark50": ("dark (brightness x0.5)", _with(dark, factor=0.5)),
    "gamma2": ("dark (gamma 2)", _with(dark_gamma, gamma=2.0)),
    "eyes": ("grey patch over the eyes (rows 12-23)", _with(patch, box=EYES_BOX)),
    "mouth": ("grey patch over the mouth (rows 32-43)", _with(patch, box=MOUTH_BOX)),
    "rot15": ("rotation 15 degrees", _with(rotate, degrees=15.0)),
    "rot30": ("rotation 30 degrees", _with(rotate, degrees=30.0)),
    "downup50": ("50% down-scale and back up", _with(down_up, scale=0.5)),
}


def seed_of(name: str) -> int:
    """The corruption's own fixed seed (CRC-32 of its name: the same in every process and Python version)."""
    return zlib.crc32(name.encode())


def corrupt(name: str, faces: np.ndarray) -> np.ndarray:
    """The corruption `name` (a key of CORRUPTIONS) of uint8 faces (N, H, W), drawn from its own seed."""
    faces = np.asarray(faces)
    if faces.dtype != np.uint8 or faces.ndim != 3:
        raise ValueError(f"expected uint8 faces (N, H, W); got {faces.dtype} {faces.shape}")
    out = CORRUPTIONS[name][1](faces, np.random.default_rng(seed_of(name)))
    assert out.shape == faces.shape and out.dtype == np.uint8, name
    return out
