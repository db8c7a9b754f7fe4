"""Face detection: boxes with scores on a grayscale image.

Two offline detectors, both shipped inside PyPI packages, so nothing is downloaded:
- "haar" (the default; alias "cascade"): OpenCV 4's bundled Haar frontal-face cascade, run by OpenCV.
  Measured on the 512x512 astronaut photo, detector alone, one core: 0.19 s against 1.09 s for "lbp".
- "lbp": the LBP frontal-face cascade that scikit-image ships, evaluated by scikit-image. It needs no
  OpenCV cascade support (OpenCV 5 removed it) and is the fallback there.
`detector="none"` treats the whole image as one face, for inputs that already are face crops.

A box is [x, y, w, h] in pixels of the input image. Detector boxes are made square and may be grown by
`margin`, so that a crop frames a face the way FER2013's tight square crops do.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

from .faces import Face, square_box

DETECTORS = ("haar", "lbp", "none")
_ALIASES = {"cascade": "haar"}

# Measured on FER2013 itself (`python bench/predict_speed.py --fer-margin`): on 400 FER2013 faces padded
# with their border, the cascade's box has about the crop's own side (median ratio 0.97, margin 0.016).
FER_MARGIN = 0.0


class WholeImage:
    """The whole image is one face (inputs that are already face crops)."""

    name = "none"

    def __call__(self, gray: np.ndarray, rgb: np.ndarray | None = None) -> list[Face]:
        return [Face((0, 0, gray.shape[1], gray.shape[0]), 1.0)]


def _filter_faces(groups, gray_shape, rgb, margin: float, relative: float, min_skin: float) -> list[Face]:
    """Skin check (colour pictures), the relative-score floor, squaring; faces sorted left to right."""
    h, w = gray_shape
    skin = _skin_mask(rgb) if rgb is not None and min_skin > 0 else None
    if skin is not None:
        groups = [g for g in groups if _central_share(skin, g[0]) >= min_skin]
    floor = relative * max((votes for _, votes in groups), default=0)
    faces = [Face(square_box(tuple(box), margin, w, h), float(votes)) for box, votes in groups if votes >= floor]
    return sorted(faces, key=lambda f: (f.box[0], f.box[1]))


def _downscale(gray: np.ndarray, max_side: int) -> tuple[np.ndarray, float]:
    h, w = gray.shape
    scale = min(1.0, max_side / max(h, w))
    if scale < 1.0:
        gray = np.asarray(Image.fromarray(gray).resize((round(w * scale), round(h * scale)), Image.BILINEAR))
    return gray, scale


class HaarDetector:
    """Frontal faces from OpenCV's bundled Haar cascade; score = number of agreeing windows (minNeighbors).

    The picture is histogram-equalised (the cascade was trained on equalised faces) and searched at
    `max_side` pixels at most; then the same skin and relative-score checks as `LbpDetector` follow.
    """

    name = "haar"

    def __init__(self, margin: float = FER_MARGIN, min_neighbors: int = 5, relative: float = 0.5,
                 min_skin: float = 0.2, scale_factor: float = 1.1, min_size: int = 24, max_side: int = 640,
                 cascade: str = "haarcascade_frontalface_default.xml"):
        import cv2
        if not hasattr(cv2, "CascadeClassifier"):
            raise RuntimeError(f"OpenCV {cv2.__version__} has no cascade detector (OpenCV 5 removed it); install "
                               "opencv-python-headless<5 (as ferlab's pyproject asks) or use detector='lbp'")
        path = Path(cv2.data.haarcascades) / cascade
        self._cascade = cv2.CascadeClassifier(str(path))
        if self._cascade.empty():
            raise RuntimeError(f"could not load the Haar cascade {path}")
        self._cv2 = cv2
        self.margin, self.min_neighbors, self.relative, self.min_skin = margin, min_neighbors, relative, min_skin
        self.scale_factor, self.min_size, self.max_side = scale_factor, min_size, max_side

    def __call__(self, gray: np.ndarray, rgb: np.ndarray | None = None) -> list[Face]:
        small, scale = _downscale(gray, self.max_side)
        if min(small.shape) < self.min_size:
            return []
        boxes, votes = self._cascade.detectMultiScale2(
            self._cv2.equalizeHist(small), scaleFactor=self.scale_factor, minNeighbors=self.min_neighbors,
            minSize=(self.min_size, self.min_size))
        groups = [(np.asarray(b, np.float64) / scale, int(v)) for b, v in zip(boxes, np.ravel(votes))]
        return _filter_faces(groups, gray.shape, rgb, self.margin, self.relative, self.min_skin)


class LbpDetector:
    """Frontal faces from scikit-image's bundled LBP cascade; score = number of agreeing raw windows.

    The cascade fires on many windows around a real face and on few around a false one, so raw windows
    are grouped here (instead of inside scikit-image) to keep that count as the detector's confidence,
    as OpenCV's minNeighbors does. LBP cascades also fire on face-like texture (badges, reflections),
    so two cheap checks follow: a face must reach `relative` times the strongest face's score, and in a
    colour picture at least `min_skin` of its central pixels must have skin chrominance (the classic
    Cr in [133, 173], Cb in [77, 127] rule: chrominance rather than brightness, so it is meant to hold
    across skin tones; it fails under strongly coloured light: pass min_skin=0 then, or when faces are
    missed in colour photos that grayscale copies find). Large images are searched at `max_side`
    pixels for speed, so the smallest face found is min_size/max_side (1/20) of the longer side;
    raise max_side for small faces in large group photos.
    """

    name = "lbp"

    def __init__(self, margin: float = FER_MARGIN, min_neighbors: int = 4, relative: float = 0.5,
                 min_skin: float = 0.2, scale_factor: float = 1.1, min_size: int = 24, max_side: int = 480):
        try:
            from skimage.data import lbp_frontal_face_cascade_filename
            from skimage.feature import Cascade
        except ImportError as e:  # pragma: no cover - scikit-image is a dependency
            raise RuntimeError("the cascade face detector needs scikit-image (pip install scikit-image); "
                               "use detector='none' for images that already are face crops") from e
        self._cascade = Cascade(lbp_frontal_face_cascade_filename())
        self.margin, self.min_neighbors, self.relative, self.min_skin = margin, min_neighbors, relative, min_skin
        self.scale_factor = scale_factor
        self.min_size, self.max_side = min_size, max_side

    def __call__(self, gray: np.ndarray, rgb: np.ndarray | None = None) -> list[Face]:
        """Faces in `gray`; `rgb`, the same picture in colour when there is one, enables the skin check."""
        small, scale = _downscale(gray, self.max_side)
        side = min(small.shape)
        if side < self.min_size:
            return []
        # threshold above 1 disables scikit-image's own merging: every raw window comes back
        raw = self._cascade.detect_multi_scale(small, scale_factor=self.scale_factor, step_ratio=1,
                                               min_size=(self.min_size, self.min_size), max_size=(side, side),
                                               min_neighbor_number=1, intersection_score_threshold=2.0)
        boxes = np.array([[d["c"], d["r"], d["width"], d["height"]] for d in raw], dtype=np.float64)
        groups = [(box / scale, votes) for box, votes in group_windows(boxes, self.min_neighbors)]
        return _filter_faces(groups, gray.shape, rgb, self.margin, self.relative, self.min_skin)


def group_windows(boxes: np.ndarray, min_votes: int, iou: float = 0.3) -> list[tuple[np.ndarray, int]]:
    """Cluster overlapping windows (IoU > `iou`); keep clusters of >= `min_votes` as (mean box, votes).

    A kept cluster lying mostly inside a stronger one (an eye or a mouth inside a face) is dropped.
    """
    n = len(boxes)
    if n == 0:
        return []
    x1, y1 = boxes[:, 0], boxes[:, 1]
    x2, y2 = x1 + boxes[:, 2], y1 + boxes[:, 3]
    area = boxes[:, 2] * boxes[:, 3]
    inter = (np.clip(np.minimum(x2[:, None], x2) - np.maximum(x1[:, None], x1), 0, None)
             * np.clip(np.minimum(y2[:, None], y2) - np.maximum(y1[:, None], y1), 0, None))
    linked = inter / (area[:, None] + area - inter) > iou
    parent = np.arange(n)

    def root(i):
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    for i, j in zip(*np.nonzero(np.triu(linked, 1))):
        parent[root(i)] = root(j)
    roots = np.array([root(i) for i in range(n)])
    groups = [(boxes[roots == r].mean(0), int((roots == r).sum())) for r in np.unique(roots)]
    groups = sorted((g for g in groups if g[1] >= min_votes), key=lambda g: -g[1])
    kept: list[tuple[np.ndarray, int]] = []
    for box, votes in groups:
        if not any(_inside(box, k) > 0.5 for k, _ in kept):
            kept.append((box, votes))
    return kept


def _inside(a: np.ndarray, b: np.ndarray) -> float:
    """Share of box a's area that lies inside box b."""
    ix = max(0.0, min(a[0] + a[2], b[0] + b[2]) - max(a[0], b[0]))
    iy = max(0.0, min(a[1] + a[3], b[1] + b[3]) - max(a[1], b[1]))
    return ix * iy / (a[2] * a[3])


def _skin_mask(rgb: np.ndarray) -> np.ndarray | None:
    """Pixels with skin chrominance, or None for a picture without colour (a gray photo saved as RGB)."""
    import cv2
    ycc = cv2.cvtColor(np.ascontiguousarray(rgb[..., :3]), cv2.COLOR_RGB2YCrCb)
    cr, cb = ycc[..., 1], ycc[..., 2]
    if max(np.abs(cr.astype(np.int16) - 128).mean(), np.abs(cb.astype(np.int16) - 128).mean()) < 2:
        return None
    return (cr >= 133) & (cr <= 173) & (cb >= 77) & (cb <= 127)


def _central_share(mask: np.ndarray, box) -> float:
    """Share of True in the middle 60% of a box (leaves out hair and background at its edges)."""
    x, y, w, h = (int(round(v)) for v in box)
    m = max(1, w // 5)
    region = mask[max(0, y + m):y + h - m, max(0, x + m):x + w - m]
    return float(region.mean()) if region.size else 0.0


def make_detector(name: str = "haar", **kwargs):
    """A detector by name: "haar" (alias "cascade"), "lbp", or "none" (the whole image is one face)."""
    key = _ALIASES.get(name, name)
    if key == "none":
        if kwargs:
            raise ValueError(f"detector 'none' takes no options; got {', '.join(kwargs)}")
        return WholeImage()
    if key == "haar":
        return HaarDetector(**kwargs)
    if key == "lbp":
        return LbpDetector(**kwargs)
    raise ValueError(f"unknown detector {name!r}; expected one of {', '.join(DETECTORS)} (or 'cascade' = haar)")
