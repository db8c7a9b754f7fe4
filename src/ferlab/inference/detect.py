"""Face detection: boxes, 0-1 scores and (for MTCNN) 5 landmarks in a picture.

Three offline detectors, each shipped inside a PyPI package, so nothing is downloaded:
- "mtcnn" (the default): MTCNN's three CNNs, run by ferlab in PyTorch (`inference/mtcnn.py`) with the
  trained weights the `mtcnn` package ships. Score: O-Net's face probability. Landmarks: the eyes, the nose
  and the mouth's corners, which `faces.crop_faces` uses to turn a tilted face upright.
- "haar" (alias "cascade"): OpenCV 4's bundled Haar frontal-face cascade. Score: agreeing windows.
- "lbp": the LBP frontal-face cascade that scikit-image ships. Score: agreeing windows. It needs no OpenCV
  cascade support (OpenCV 5 removed it).
`detector="none"` treats the whole image as one face, for inputs that already are face crops.

No detector looks at colour, so none depends on the caller's channel order (RGB from PIL, BGR from
OpenCV): the cascades see the grayscale picture, MTCNN the mean of the three channels (a grey picture
given as (H, W) or as RGB is the same input to it). An earlier skin-chrominance check on the cascades'
faces is gone: it assumed RGB, failed under coloured light, and a CNN detector needs no colour rule.

A box is [x, y, w, h] in pixels of the input image. Detector boxes are made square and may be grown by
`margin`, so that a crop frames a face the way FER2013's tight square crops do.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

from .faces import Face, square_box, to_gray

DETECTORS = ("mtcnn", "haar", "lbp", "none")
_ALIASES = {"cascade": "haar"}

# Measured on FER2013 itself (`python bench/predict_speed.py --fer-margin`): on 400 FER2013 faces padded
# with their border, each detector's squared box has about the crop's own side and centre (median side ratio:
# mtcnn 1.05, haar and lbp 0.98; centres within 0.01 of the side), so no margin is added.
FER_MARGIN = 0.0


# MTCNN's thresholds (P-Net, R-Net, O-Net) below the reference's 0.6/0.7/0.8 at which a face is still kept
# when OpenCV's eye cascade finds an eye where O-Net put one: faces behind a hand or a mask, whose eyes show
# (bench/occlusion.py: covered faces found 67.7% -> 79.7%, no more false faces on 204 face-free pictures and
# 64 large one-face photos, where the same recall without the eye check makes 3x as many; lower thresholds
# still and false faces pass the eye check)
RESCUE_THRESHOLDS = (0.6, 0.6, 0.5)


class MtcnnDetector:
    """Faces, 0-1 scores and 5 landmarks from MTCNN (`inference/mtcnn.py`), on CPU or CUDA.

    MTCNN is given the mean of the picture's three channels (or the grey picture), so that RGB and BGR give
    the same faces. `min_face` (pixels) is the smallest face looked for: the image pyramid starts where such a
    face fills P-Net's 12-pixel window, so raising it skips the largest, costliest levels. The default, 40,
    is near the classifier's 48-pixel input (smaller faces are upscaled blur) and halves the time of
    MTCNN's usual 20. Boxes are squared about their centre (MTCNN's are taller than wide) and grown by `margin`.

    A face must pass `thresholds` (default: the reference's), or `rescue` (default: RESCUE_THRESHOLDS) and the
    `EyeCheck`: a hand over the mouth and chin costs a face its O-Net score (the lower half is half of what
    O-Net looks at) while its eyes still show. `rescue=None` keeps the reference's faces only. Every face
    found with `thresholds` is found either way (`Mtcnn`'s NMS ranks those first).
    """

    name = "mtcnn"
    reads_colour = True  # `many` needs a grey copy only of pictures without colour (see Predictor._detect_many)

    def __init__(self, margin: float = FER_MARGIN, min_face: float = 40,
                 thresholds=None, device: str = "cpu", rescue=RESCUE_THRESHOLDS):
        from .mtcnn import THRESHOLDS, Mtcnn
        self._eyes = EyeCheck() if rescue is not None else None
        self._mtcnn = Mtcnn(device, min_face=min_face, thresholds=thresholds or THRESHOLDS, grey=True,
                            rescue=rescue)
        self.margin, self.min_face = margin, min_face

    def __call__(self, gray: np.ndarray, rgb: np.ndarray | None = None) -> list[Face]:
        """Faces in the picture: `rgb` (any channel order) when given, else `gray`."""
        return self.many([gray], [rgb])[0]

    def follow(self, picture: np.ndarray, boxes) -> list[Face | None]:
        """Each face again where `boxes` ((x, y, w, h), as this detector gives them) say it should be in
        `picture` (RGB in any channel order, or grey): MTCNN's last stage (O-Net) alone on each box's square
        gives its new box, score and landmarks, or None where the score is below O-Net's threshold (the face
        has gone, or moved too far from the box). What `inference/tracking.py` follows a video's faces with."""
        from .mtcnn import onet_at
        h, w = picture.shape[:2]
        squares = []
        for x, y, bw, bh in boxes:  # the square MTCNN saw: the box without its margin
            side, cx, cy = max(bw, bh) / (1 + 2 * self.margin), x + bw / 2, y + bh / 2
            squares.append((cx - side / 2, cy - side / 2, cx + side / 2, cy + side / 2))
        found, scores, marks = onet_at(self._mtcnn.grey_nets[2], picture, squares)
        return [Face(square_box((x1, y1, x2 - x1, y2 - y1), self.margin, w, h), float(score),
                     tuple((float(x), float(y)) for x, y in m)) if score > self._mtcnn.thresholds[2] else None
                for (x1, y1, x2, y2), score, m in zip(found, scores, marks)]

    def many(self, grays: list[np.ndarray], rgbs: list[np.ndarray | None]) -> list[list[Face]]:
        """Faces in each of several pictures, found in one batched MTCNN pass (pictures of one size share each
        pyramid level's forward pass, and all candidates go through R-Net and O-Net together): the same faces
        as one picture at a time, with less per-call overhead."""
        # MTCNN takes the mean of the channels itself (grey=True), from the few pixels each stage reads
        pictures = [r[..., :3] if r is not None and r.ndim == 3 and r.shape[2] >= 3 else g for g, r in zip(grays, rgbs)]
        big_enough = [i for i, p in enumerate(pictures) if min(p.shape[:2]) >= 12]
        found = self._mtcnn([pictures[i] for i in big_enough]) if big_enough else []
        out: list[list[Face]] = [[] for _ in pictures]
        for i, f in zip(big_enough, found):
            h, w = pictures[i].shape[:2]
            faces = [Face(square_box((x1, y1, x2 - x1, y2 - y1), self.margin, w, h), float(score),
                          tuple((float(x), float(y)) for x, y in marks))
                     for (x1, y1, x2, y2), score, marks, sure in zip(f["boxes"], f["scores"], f["landmarks"], f["sure"])
                     if sure or self._eyes(pictures[i], (x1, y1, x2, y2), marks)]
            out[i] = sorted(faces, key=lambda f: (f.box[0], f.box[1]))
        return out


class EyeCheck:
    """Whether OpenCV's Haar eye cascade finds an eye where MTCNN's O-Net put one of its eye landmarks: the
    second opinion a face found only at the rescue thresholds needs.

    The upper part of the face's square box (from 0.6 of its side above the centre to 0.1 below, 1.2 sides
    wide) is taken from the mean of the picture's channels (so, like MTCNN, it does not depend on their order),
    scaled so that the side is 120 pixels, histogram-equalised, and searched for eyes of 14 to 50 pixels
    (3 agreeing windows). An eye counts when its centre is within 0.15 of the side of either eye landmark.
    """

    SIDE = 120

    def __init__(self):
        import cv2
        if not hasattr(cv2, "CascadeClassifier"):
            raise RuntimeError(f"OpenCV {cv2.__version__} has no cascade detector (OpenCV 5 removed it), which MTCNN's "
                               "eye check for half-hidden faces needs: install opencv-python-headless<5 (as ferlab's "
                               "pyproject asks) or pass rescue=None")
        path = Path(cv2.data.haarcascades) / "haarcascade_eye.xml"
        self._cascade = cv2.CascadeClassifier(str(path))
        if self._cascade.empty():
            raise RuntimeError(f"could not load the Haar eye cascade {path}")
        self._cv2 = cv2

    def __call__(self, picture: np.ndarray, box, landmarks) -> bool:
        """`picture` (H, W, 3) or (H, W) uint8, MTCNN's `box` (x1, y1, x2, y2) and 5 `landmarks` (x, y)."""
        cv2 = self._cv2
        x1, y1, x2, y2 = (float(v) for v in box)
        side = max(x2 - x1, y2 - y1, 1.0)
        cx, cy = (x1 + x2) / 2, (y1 + y2) / 2
        h, w = picture.shape[:2]
        top, bottom = int(max(0, cy - 0.6 * side)), int(min(h, cy + 0.1 * side))
        left, right = int(max(0, cx - 0.6 * side)), int(min(w, cx + 0.6 * side))
        if bottom - top < 2 or right - left < 2:
            return False
        region = picture[top:bottom, left:right]
        if region.ndim == 3:  # uint8 sums are exact, so the order of the channels does not matter
            region = (region[..., 0].astype(np.uint16) + region[..., 1] + region[..., 2] + 1) // 3
        scale = self.SIDE / side
        region = cv2.resize(region.astype(np.uint8), None, fx=scale, fy=scale,
                            interpolation=cv2.INTER_AREA if scale < 1 else cv2.INTER_LINEAR)
        eyes = self._cascade.detectMultiScale(cv2.equalizeHist(region), scaleFactor=1.1, minNeighbors=3,
                                              minSize=(14, 14), maxSize=(50, 50))
        for ex, ey, ew, eh in eyes:
            ex, ey = left + (ex + ew / 2) / scale, top + (ey + eh / 2) / scale
            if min(np.hypot(ex - mx, ey - my) for mx, my in landmarks[:2]) < 0.15 * side:
                return True
        return False


def detect_many(detector, pictures: list[np.ndarray]) -> tuple[list[np.ndarray | None], list[list[Face]]]:
    """`detector`'s faces in each picture ((H, W, 3) colour or (H, W) grey uint8), batched where it can batch
    (MTCNN's `many`), else one by one; and the grey copy of each picture made on the way: None for a colour
    picture given to a detector that reads colour as it is (`reads_colour`: MTCNN), which needs none."""
    colour = getattr(detector, "reads_colour", False)
    grays = [None if colour and p.ndim == 3 and p.shape[2] >= 3 else to_gray(p) for p in pictures]
    many = getattr(detector, "many", None)
    found = many(grays, pictures) if many is not None else [detector(g, p) for g, p in zip(grays, pictures)]
    return grays, found


class WholeImage:
    """The whole image is one face (inputs that are already face crops)."""

    name = "none"

    def __call__(self, gray: np.ndarray, rgb: np.ndarray | None = None) -> list[Face]:
        return [Face((0, 0, gray.shape[1], gray.shape[0]), 1.0)]


def _filter_faces(groups, gray_shape, margin: float, relative: float, min_votes: int) -> list[Face]:
    """The relative-score floor, squaring; faces sorted left to right. The score is `cascade_score`."""
    h, w = gray_shape
    floor = relative * max((votes for _, votes in groups), default=0)
    faces = [Face(square_box(tuple(box), margin, w, h), cascade_score(votes, min_votes))
             for box, votes in groups if votes >= floor]
    return sorted(faces, key=lambda f: (f.box[0], f.box[1]))


def cascade_score(votes: int, min_votes: int) -> float:
    """A cascade's agreeing windows as a 0-1 confidence: votes / (votes + min_votes), so a face at the
    detector's own vote threshold scores 0.5 and more agreement tends to 1. Monotone in the votes, for sorting
    and thresholding like MTCNN's probability; not itself a calibrated probability."""
    return float(votes) / (float(votes) + max(1, min_votes))


def _downscale(gray: np.ndarray, max_side: int) -> tuple[np.ndarray, float]:
    h, w = gray.shape
    scale = min(1.0, max_side / max(h, w))
    if scale < 1.0:
        gray = np.asarray(Image.fromarray(gray).resize((round(w * scale), round(h * scale)), Image.BILINEAR))
    return gray, scale


class HaarDetector:
    """Frontal faces from OpenCV's bundled Haar cascade; score from the agreeing windows (`cascade_score`).

    The picture is histogram-equalised (the cascade was trained on equalised faces) and searched at
    `max_side` pixels at most; then the same relative-score check as `LbpDetector` follows.
    """

    name = "haar"

    def __init__(self, margin: float = FER_MARGIN, min_neighbors: int = 5, relative: float = 0.5,
                 scale_factor: float = 1.1, min_size: int = 24, max_side: int = 640,
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
        self.margin, self.min_neighbors, self.relative = margin, min_neighbors, relative
        self.scale_factor, self.min_size, self.max_side = scale_factor, min_size, max_side

    def __call__(self, gray: np.ndarray, rgb: np.ndarray | None = None) -> list[Face]:
        small, scale = _downscale(gray, self.max_side)
        if min(small.shape) < self.min_size:
            return []
        boxes, votes = self._cascade.detectMultiScale2(
            self._cv2.equalizeHist(small), scaleFactor=self.scale_factor, minNeighbors=self.min_neighbors,
            minSize=(self.min_size, self.min_size))
        groups = [(np.asarray(b, np.float64) / scale, int(v)) for b, v in zip(boxes, np.ravel(votes))]
        return _filter_faces(groups, gray.shape, self.margin, self.relative, self.min_neighbors)


class LbpDetector:
    """Frontal faces from scikit-image's bundled LBP cascade; score from the agreeing raw windows
    (`cascade_score`).

    The cascade fires on many windows around a real face and on few around a false one, so raw windows
    are grouped here (instead of inside scikit-image) to keep that count as the detector's confidence,
    as OpenCV's minNeighbors does. LBP cascades also fire on face-like texture (badges, reflections),
    so a face must reach `relative` times the strongest face's score. Large images are searched at `max_side`
    pixels for speed, so the smallest face found is min_size/max_side (1/20) of the longer side;
    raise max_side for small faces in large group photos.
    """

    name = "lbp"

    def __init__(self, margin: float = FER_MARGIN, min_neighbors: int = 4, relative: float = 0.5,
                 scale_factor: float = 1.1, min_size: int = 24, max_side: int = 480):
        try:
            from skimage.data import lbp_frontal_face_cascade_filename
            from skimage.feature import Cascade
        except ImportError as e:  # pragma: no cover - scikit-image is a dependency
            raise RuntimeError("the cascade face detector needs scikit-image (pip install scikit-image); "
                               "use detector='none' for images that already are face crops") from e
        self._cascade = Cascade(lbp_frontal_face_cascade_filename())
        self.margin, self.min_neighbors, self.relative = margin, min_neighbors, relative
        self.scale_factor = scale_factor
        self.min_size, self.max_side = min_size, max_side

    def __call__(self, gray: np.ndarray, rgb: np.ndarray | None = None) -> list[Face]:
        """Faces in `gray`; `rgb` is not used (the interface's colour picture, for detectors that want it)."""
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
        return _filter_faces(groups, gray.shape, self.margin, self.relative, self.min_neighbors)


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


def make_detector(name: str = "mtcnn", **kwargs):
    """A detector by name: "mtcnn" (the default), "haar" (alias "cascade"), "lbp", or "none" (the whole image
    is one face)."""
    key = _ALIASES.get(name, name)
    if key == "none":
        if kwargs:
            raise ValueError(f"detector 'none' takes no options; got {', '.join(kwargs)}")
        return WholeImage()
    if key == "mtcnn":
        return MtcnnDetector(**kwargs)
    if key == "haar":
        return HaarDetector(**kwargs)
    if key == "lbp":
        return LbpDetector(**kwargs)
    raise ValueError(f"unknown detector {name!r}; expected one of {', '.join(DETECTORS)} (or 'cascade' = haar)")
