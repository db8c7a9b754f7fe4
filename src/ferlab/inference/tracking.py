"""Following a video's faces from frame to frame between full detections, so that a video is analysed faster
than it plays.

A full MTCNN detection searches the whole frame at every scale (its image pyramid and P-Net are most of the
cost: about 4.5 times the classifier's work on one face, flip TTA included, at 640x480, and 10 times at
1280x720), yet from one frame to the next a face moves a few pixels. So `FaceFollower` detects on every
`every`-th frame only; on the frames between, MTCNN's last stage (O-Net) alone looks at one 48x48 crop where
each face should be, and gives its new box, score and landmarks (`MtcnnDetector.follow`). Where it should be:
its box moved on as it moved over the last frame (centre and size), since O-Net's box regression corrects a
small offset but lags behind a face that keeps moving.

A full detection runs at once, on the same frame, when a face is lost: O-Net's score falls below its
threshold (the face left, turned away, was hidden or moved too far) or two followed faces become one (MTCNN's
own NMS rule). Whenever a full detection finds fewer faces than were followed, they come five times as
often (every 2nd frame at least) for the next 30 frames, or until the face is found again: a face hidden
behind another comes back within a frame or two (where two faces cross, the faces of a detection on every
frame in 99.0% of the frames at every=10, 94.3% without this). A face that
appears out of nowhere is found at the next full detection, up to `every - 1` analysed frames late. bench/predict_speed.py --videos-only measures how often the faces so
found are those of a detection on every frame, and tests/test_tracking.py asserts it on a generated clip.

A detector without `follow` (the cascades, `none`) detects on every frame whatever `every` says.
"""
from __future__ import annotations

import numpy as np

from .detect import detect_many
from .faces import Face
from .video import iou


STILL = (0.0, 0.0, 1.0)  # the motion of a face just found: none
# When a full detection finds fewer faces than were followed (one hidden behind another, turned away, gone),
# full detections come every `every // WATCH_SHARE` frames (2 at least) for WATCH_FRAMES frames, or until it is back
WATCH_SHARE, WATCH_FRAMES = 5, 30


class FaceFollower:
    """The faces of consecutive frames of one video: a full detection on every `every`-th frame (and when a face
    is lost), O-Net following the faces on the frames between. `reset()` before another video's frames."""

    def __init__(self, detector, every: int):
        if every < 1:
            raise ValueError(f"detect_every must be >= 1, got {every}")
        if not hasattr(detector, "follow"):
            every = 1  # nothing to follow faces with: detect every frame
        self.detector, self.every = detector, every
        self.detections = self.frames = 0  # how many frames were detected in full, of how many (for the bench)
        self.reset()

    def reset(self) -> None:
        self.faces: list[Face] = []
        self.motion: list[tuple[float, float, float]] = []  # each face's last step: centre x, y, size ratio
        self.since: int | None = None  # frames since the last full detection; None: none in this video yet
        self.expected = 0  # faces followed before a full detection found fewer
        self.watching = 0  # frames left in which full detections come every `watch_every` frames

    @property
    def watch_every(self) -> int:
        return min(self.every, max(2, self.every // WATCH_SHARE))

    def __call__(self, image: np.ndarray) -> list[Face]:
        """Faces in the next frame of the video: an (H, W, 3) RGB or (H, W) grey uint8 picture."""
        self.frames += 1
        gap = self.watch_every if self.watching else self.every
        self.watching = max(0, self.watching - 1)
        if self.since is not None and self.since + 1 < gap:
            followed = self._follow(image)
            if followed is not None:
                self.since += 1
                return followed
        return self._detect(image)

    def _detect(self, image: np.ndarray) -> list[Face]:
        self.detections += 1
        before = len(self.faces)
        faces = detect_many(self.detector, [image])[1][0]
        if len(faces) < before:  # one went out of sight: look for it again sooner, for a while
            self.expected, self.watching = max(self.expected, before), WATCH_FRAMES
        elif len(faces) >= self.expected:  # all found again (or none was missing): the usual pace
            self.expected = self.watching = 0
        motion = []
        for f in faces:  # a face that continues a followed one (IoU >= 0.5) keeps moving as it did
            overlap, j = max(((iou(f.box, g.box), j) for j, g in enumerate(self.faces)), default=(0.0, None))
            motion.append(_step(self.faces[j], f) if overlap >= 0.5 else STILL)
        self.faces, self.motion, self.since = faces, motion, 0
        return faces

    def _follow(self, image: np.ndarray) -> list[Face] | None:
        """The faces followed into this frame, or None when one is lost."""
        if not self.faces:
            return []
        found = self.detector.follow(image, [_ahead(f.box, m) for f, m in zip(self.faces, self.motion)])
        if any(f is None for f in found) or _merged(found):
            return None
        # left to right, as a detector gives them
        pairs = sorted(zip(found, self.faces), key=lambda p: (p[0].box[0], p[0].box[1]))
        self.faces, self.motion = [f for f, _ in pairs], [_step(before, f) for f, before in pairs]
        return self.faces


def _step(before: Face, face: Face) -> tuple[float, float, float]:
    """How a face moved from one frame to the next: its centre's x and y, and the ratio of its sizes."""
    (x, y, w, h), (bx, by, bw, bh) = face.box, before.box
    return x + w / 2 - bx - bw / 2, y + h / 2 - by - bh / 2, w / max(bw, 1)


def _ahead(box, motion) -> tuple[float, float, float, float]:
    """Where a face in `box` should be in the next frame: moved and scaled as in its last step (by 25% at most).
    O-Net's box regression corrects a small offset, but lags behind a face that keeps moving."""
    x, y, w, h = (float(v) for v in box)
    dx, dy, grow = motion
    grow = float(np.clip(grow, 0.8, 1.25))
    cx, cy = x + w / 2 + dx, y + h / 2 + dy
    return cx - w * grow / 2, cy - h * grow / 2, w * grow, h * grow


def _merged(faces: list[Face]) -> bool:
    """Whether two faces overlap as MTCNN's last NMS would merge them (intersection over the smaller box > 0.7)."""
    for i, a in enumerate(faces):
        for b in faces[i + 1:]:
            ix = min(a.box[0] + a.box[2], b.box[0] + b.box[2]) - max(a.box[0], b.box[0])
            iy = min(a.box[1] + a.box[3], b.box[1] + b.box[3]) - max(a.box[1], b.box[1])
            if ix > 0 and iy > 0 and ix * iy > 0.7 * min(a.box[2] * a.box[3], b.box[2] * b.box[3]):
                return True
    return False
