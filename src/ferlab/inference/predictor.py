"""Predictor: faces in photos, folders, videos, cameras and image bytes -> expression probabilities.

Each face becomes one dict, the contract the CLI and the REST server share:
    {"source": str | None, "frame": int | None, "time_s": float | None, "track": int | None,
     "box": [x, y, w, h], "score": float, "landmarks": {name: [x, y]} | None, "label": str,
     "probs": {class_name: float}}
Frames come from `sources` and are streamed, faces batched through the model, so memory stays flat on long
videos. Drawing faces is `draw`, writing them out `output`.
"""
from __future__ import annotations

import logging
from pathlib import Path
from typing import Iterator

import numpy as np
import torch

from ..engine.checkpoint import load_checkpoint, model_from_checkpoint
from ..engine.predict import resolve_device, tta_views
from ..weights import resolve_model
from .detect import detect_many, make_detector
from .explain import grad_cam
from .faces import LANDMARKS, crop_faces, crop_faces_from, crops_to_input, crops_to_pixels, eye_angle
from .sources import Frame, frames, to_rgb
from .tracking import FaceFollower
from .video import IoUTracker

log = logging.getLogger("ferlab.predict")

# Turning faces upright by their eyes before the crop: measured by bench/align_eval.py (see the README)
ALIGN = True
PENDING_FRAMES = 32  # frames held while their faces wait for a full batch (1080p RGB: 6 MB each)
# frames whose faces are looked for in one batched detector pass (bench/predict_speed.py times it against one
# photo at a time), unless their pixels reach DETECT_PIXELS first (the pyramid's memory grows with them); a
# camera's frames are never held back
DETECT_FRAMES = 8
DETECT_PIXELS = 4_000_000
# a video's faces are looked for in the whole frame on every DETECT_EVERY-th analysed frame, and followed by
# MTCNN's O-Net alone on the frames between (inference/tracking.py); measured by bench/predict_speed.py
DETECT_EVERY = 10


class TorchClassifier:
    """A checkpoint's network: model input (N, C, S, S) -> probabilities (N, classes)."""

    def __init__(self, ckpt: dict, device: str = "cpu"):
        self.device = resolve_device(device)
        model, self.pre = model_from_checkpoint(ckpt)
        # on the CPU, oneDNN's convolutions run faster on channels-last tensors (measured 1.3-1.9x for vgg_s)
        self.memory_format = torch.channels_last if self.device.type == "cpu" else torch.contiguous_format
        self.model = model.to(self.device, memory_format=self.memory_format)
        # what classifies: a copy with each BatchNorm folded into the convolution or linear layer before it (the
        # same function up to float rounding, 1e-7 in the probabilities; vgg_s on the CPU: 15% less time). `model`
        # itself stays as trained, for Grad-CAM's hooks
        self._folded = fold_batchnorm(self.model)
        self.classes = tuple(ckpt["classes"])
        self.name = ckpt["model"]

    @torch.no_grad()
    def __call__(self, x: torch.Tensor) -> np.ndarray:
        x = x.to(self.device).contiguous(memory_format=self.memory_format)
        return self._folded(x).float().softmax(1).cpu().numpy()


def fold_batchnorm(model: torch.nn.Module) -> torch.nn.Module:
    """An inference copy of `model` (put in eval mode) in which each BatchNorm that directly follows a convolution
    or linear layer in an `nn.Sequential` is folded into that layer (its scale and shift moved into the weights
    and bias) and replaced by an identity: one pass over each activation less. Other BatchNorms stay as they are."""
    import copy

    from torch.nn.utils.fusion import fuse_conv_bn_eval, fuse_linear_bn_eval
    folded = copy.deepcopy(model.eval())
    for seq in [m for m in folded.modules() if isinstance(m, torch.nn.Sequential)]:
        for i in range(len(seq) - 1):
            layer, bn = seq[i], seq[i + 1]
            if not isinstance(bn, torch.nn.modules.batchnorm._BatchNorm) or bn.running_mean is None:
                continue
            if type(layer) is torch.nn.Conv2d and isinstance(bn, torch.nn.BatchNorm2d):
                seq[i] = fuse_conv_bn_eval(layer, bn)
            elif type(layer) is torch.nn.Linear and isinstance(bn, torch.nn.BatchNorm1d):
                seq[i] = fuse_linear_bn_eval(layer, bn)
            else:
                continue
            seq[i + 1] = torch.nn.Identity()
    return folded


def load_classifier(model: str | Path = "default", device: str = "cpu"):
    """"default" (the packaged weights), a run folder, a .pt checkpoint, or a .onnx export."""
    path = resolve_model(model)
    if path.suffix == ".onnx":
        if not path.exists():
            raise FileNotFoundError(f"ONNX model {path} not found")
        if device not in ("cpu", "auto"):
            raise ValueError(f"ONNX models run on the CPU through ONNX Runtime; got device={device!r}")
        from .onnx import OnnxClassifier
        return OnnxClassifier(path)
    return TorchClassifier(load_checkpoint(path), device)


class Predictor:
    """Detect faces and classify their expressions.

    model: "default", a run folder, a .pt checkpoint or a .onnx export. detector: "mtcnn" (the default),
    "haar" (alias "cascade"), "lbp" or "none" (the whole image is one face). tta: average each face's
    probabilities with its mirror image's (flip TTA, as `ferlab eval` reports and as the temperature was
    fitted; False halves the classifier's work). align: turn each face upright by its eyes before the crop
    (detectors with landmarks only: mtcnn). Extra keyword arguments go to the detector (margin, min_face,
    min_neighbors, ...); MTCNN runs on the classifier's device unless given `device`.

    detect_every: in videos and camera streams, look for faces in the whole frame on every `detect_every`-th
    analysed frame only (and at once when a face is lost), following the faces found on the frames between
    with MTCNN's last stage alone (`inference/tracking.py`): the same faces, several times faster. A new face
    is found up to `detect_every - 1` analysed frames late. 1: a full detection on every frame. Photos, and
    detectors other than MTCNN, are always detected in full.
    """

    def __init__(self, model: str | Path = "default", detector: str = "mtcnn", device: str = "cpu",
                 batch_size: int = 64, tta: bool = True, align: bool = ALIGN, detect_every: int = DETECT_EVERY,
                 **detector_kwargs):
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        if detect_every < 1:
            raise ValueError(f"detect_every must be >= 1, got {detect_every}")
        self.tta, self.align = bool(tta), bool(align)
        self.classifier = load_classifier(model, device)
        self.device = self.classifier.device if isinstance(self.classifier, TorchClassifier) else "cpu"
        if detector == "mtcnn":
            detector_kwargs.setdefault("device", self.device)
        self.detector = make_detector(detector, **detector_kwargs)
        self.batch_size = batch_size
        self._tracker, self._track_at = IoUTracker(), (None, -1)  # video faces keep an id from frame to frame
        self.follower, self._follow_at = FaceFollower(self.detector, detect_every), (None, -1)

    @property
    def detect_every(self) -> int:
        """Video frames are searched whole on every `detect_every`-th analysed frame (1 with a detector that
        cannot follow faces)."""
        return self.follower.every

    @property
    def classes(self) -> tuple[str, ...]:
        return self.classifier.classes

    @property
    def preprocess(self):
        """The model's `Preprocess` (input size, channels, mean/std), read from its checkpoint or ONNX file."""
        return self.classifier.pre

    def predict(self, source, every: int = 1, color: str = "rgb") -> list:
        """Faces in `source`: a path (image, folder searched recursively, video), encoded image bytes (a PNG or
        JPEG file's contents, say), a PIL image, or a numpy uint8 image ((H, W, 3) RGB, or BGR as OpenCV gives
        it with `color="bgr"`, or (H, W) gray). A list or tuple of any of these gives one list of faces per
        item, in order (faces are still classified in batches across the items). Unreadable files and bytes
        that are no image raise a ValueError that says what was expected."""
        if isinstance(source, (list, tuple)):
            grouped: list[list[dict]] = [[] for _ in source]
            for fr, faces in self.stream(source, every, color=color):
                grouped[fr.item] += faces
            return grouped
        return [face for _, faces in self.stream(source, every, color=color) for face in faces]

    def top_emotion(self, image, color: str = "rgb") -> tuple[str | None, float | None]:
        """(label, probability) of the largest face in one picture; (None, None) when it has none."""
        return top_emotion(self.predict(image, color=color))

    def predict_crops(self, crops: list[np.ndarray]) -> np.ndarray:
        """Probabilities (N, classes) for grayscale face crops of any size, in batches."""
        if getattr(self.classifier, "takes_pixels", False):  # an ONNX export: preprocessing in its graph
            batch = lambda c: crops_to_pixels(c, self.preprocess)  # noqa: E731
        else:
            batch = lambda c: crops_to_input(c, self.preprocess, self.device)  # noqa: E731
        out = [self._probs(batch(crops[i:i + self.batch_size])) for i in range(0, len(crops), self.batch_size)]
        return np.concatenate(out) if out else np.empty((0, len(self.classes)), np.float32)

    def _probs(self, x: torch.Tensor) -> np.ndarray:
        views = tta_views(x, "flip" if self.tta else "none")  # the views `ferlab eval` averages
        probs = self.classifier(torch.cat(views))  # one forward pass for all views: less per-call overhead
        return probs.reshape(len(views), len(x), -1).mean(0)

    def explain(self, image) -> list[dict]:
        """The faces of one picture (a path, image bytes, numpy RGB / gray, or PIL) as `predict` gives them, each with
        "heatmap": its Grad-CAM map for the reported label, float32 (h, w) in 0..1 over the face's box (turned
        back where the crop was aligned). With TTA the map is the mean of the face's and of its mirror's
        (flipped back), as the label is the mean of their probabilities."""
        if not isinstance(self.classifier, TorchClassifier):
            raise ValueError("explaining needs the PyTorch model's gradients; an ONNX export has none: pass the "
                             "run folder or .pt checkpoint it came from")
        rgb = to_rgb(image)
        faces, crops = self._detect(rgb)
        fr = Frame(None, str(image) if isinstance(image, (str, Path)) else None)
        _, out = next(self._flush([(fr, faces)], crops))
        if not faces:
            return out
        x = crops_to_input(crops, self.preprocess, self.device)
        target = [self.classes.index(f["label"]) for f in out]
        cams, _ = grad_cam(self.classifier.model, x, target)
        if self.tta:
            cams = (cams + grad_cam(self.classifier.model, x.flip(-1), target)[0][:, :, ::-1]) / 2
            cams /= np.maximum(cams.max((1, 2), keepdims=True), 1e-12)
        for f, face, cam in zip(out, faces, cams):
            f["heatmap"] = _cam_on_box(cam, face, self.align)
        return out

    def stream(self, source, every: int = 1, errors: list | None = None, progress: bool = False,
               keep_images: bool = False, color: str = "rgb",
               video_timeout_s: float | None = None) -> Iterator[tuple[Frame, list[dict]]]:
        """(frame, its faces) in input order, for any `source` `predict` takes (`Frame.item` is the index of
        the item a frame came from when `source` is a list). With an `errors` list, unreadable inputs (files, bytes
        that are no image) are appended to it as (path or name, reason) and skipped; without one they raise. Frames keep their pixels only
        with `keep_images` (to draw on them); at most PENDING_FRAMES of them wait for a batch. A video file
        still going after `video_timeout_s` seconds is stopped there, as an error of that file (its frames so
        far kept)."""
        if color not in ("rgb", "bgr"):
            raise ValueError(f"color must be 'rgb' or 'bgr' (the channel order of numpy images), got {color!r}")
        pending: list[tuple[Frame, list]] = []
        crops: list[np.ndarray] = []
        self._follow_at = (None, -1)  # a video starts with a full detection in every call
        for group in _detect_groups(frames(source, every, errors, progress, color, video_timeout_s)):
            found = iter(self._find([fr for fr in group if fr.error is None]))
            for fr in group:
                # an unreadable input keeps its place in the output
                faces, face_crops = ([], []) if fr.error is not None else next(found)
                if not faces and fr.frame is None and fr.error is None:  # normal: an empty list, a debug note
                    log.debug("no face found in %s; for pictures that already are face crops use detector "
                              "'none'", fr.source or "the image")
                crops += face_crops
                if not keep_images:
                    fr.image = None
                pending.append((fr, faces))
                # bounded by faces and by frames: a long stretch of faceless video frames is not hoarded
                if fr.live or len(crops) >= self.batch_size or len(pending) >= min(self.batch_size, PENDING_FRAMES):
                    yield from self._flush(pending, crops)
                    pending, crops = [], []
        yield from self._flush(pending, crops)

    def _find(self, group: list[Frame]) -> list[tuple[list, list[np.ndarray]]]:
        """(faces, grey crops) of each frame of `group`: photos in one batched detector pass (`_detect_many`),
        video frames one after another through the follower, unless it detects on every frame anyway."""
        if self.follower.every == 1:
            return self._detect_many([fr.image for fr in group])
        stills = [i for i, fr in enumerate(group) if fr.frame is None]
        out = dict(zip(stills, self._detect_many([group[i].image for i in stills])))
        for i, fr in enumerate(group):
            if fr.frame is None:
                continue
            source, last = self._follow_at
            if fr.source != source or fr.frame <= last:  # another video (or the same one again)
                self.follower.reset()
            self._follow_at = (fr.source, fr.frame)
            faces = self.follower(fr.image)
            out[i] = (faces, crop_faces_from(fr.image, faces, self.align))
        return [out[i] for i in range(len(group))]

    def _detect(self, image: np.ndarray) -> tuple[list, list[np.ndarray]]:
        """The faces in one picture (RGB or gray) and their grey crops, turned upright with `align`."""
        return self._detect_many([image])[0]

    def _detect_many(self, images: list[np.ndarray]) -> list[tuple[list, list[np.ndarray]]]:
        """`_detect` for several pictures, in one batched detector pass where the detector can batch."""
        if not images:
            return []
        # a detector that reads colour pictures as they are makes no grey copy of them: only the faces are greyed
        grays, found = detect_many(self.detector, images)
        return [(faces, crop_faces(gray, faces, self.align) if gray is not None else
                 crop_faces_from(im, faces, self.align)) for im, gray, faces in zip(images, grays, found)]

    def _flush(self, pending, crops):
        probs = self.predict_crops(crops)
        i = 0
        for fr, faces in pending:
            if fr.frame is not None:
                source, last = self._track_at
                if fr.source != source or fr.frame <= last:  # a new video (or the same one again): new ids
                    self._tracker = IoUTracker()
                self._track_at = (fr.source, fr.frame)
            tracks = self._tracker.update([f.box for f in faces]) if fr.frame is not None else [None] * len(faces)
            out = []
            for face, track in zip(faces, tracks):
                p = probs[i]
                i += 1
                out.append({"source": fr.source, "frame": fr.frame, "time_s": fr.time_s, "track": track,
                            "box": [int(v) for v in face.box], "score": float(face.score),
                            "landmarks": landmarks(face), "label": self.classes[int(p.argmax())],
                            "probs": {c: float(v) for c, v in zip(self.classes, p)}})
            yield fr, out


def _cam_on_box(cam: np.ndarray, face, aligned: bool) -> np.ndarray:
    """A Grad-CAM map over the model input -> over the face's box in the picture: resized to the box, and
    turned back by the eye angle where the crop had been turned upright."""
    import cv2
    w, h = int(face.box[2]), int(face.box[3])
    out = cv2.resize(np.ascontiguousarray(cam, np.float32), (w, h), interpolation=cv2.INTER_LINEAR)
    if aligned and face.landmarks is not None:
        m = cv2.getRotationMatrix2D((w / 2, h / 2), -eye_angle(face), 1.0)
        out = cv2.warpAffine(out, m, (w, h), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)
    return np.clip(out, 0, 1)


def landmarks(face) -> dict[str, list[float]] | None:
    """A detected face's five landmarks as {name: [x, y]} in pixels of the picture (LANDMARKS' names and
    order: left and right as the picture shows them), or None from a detector without landmarks."""
    if face.landmarks is None:
        return None
    return {name: [round(float(x), 2), round(float(y), 2)] for name, (x, y) in zip(LANDMARKS, face.landmarks)}


def top_emotion(faces: list[dict]) -> tuple[str | None, float | None]:
    """(label, probability) of the largest of `faces` (as `Predictor.predict` gives them for one picture);
    (None, None) for no face."""
    if not faces:
        return None, None
    face = max(faces, key=lambda f: f["box"][2] * f["box"][3])
    return face["label"], face["probs"][face["label"]]


def _detect_groups(frames: Iterator[Frame]) -> Iterator[list[Frame]]:
    """Consecutive frames in groups of up to DETECT_FRAMES (or DETECT_PIXELS), for one detector pass each;
    a camera frame closes its group at once, so live frames are answered without waiting for more."""
    group: list[Frame] = []
    pixels = 0
    for fr in frames:
        group.append(fr)
        pixels += 0 if fr.image is None else fr.image.shape[0] * fr.image.shape[1]
        if fr.live or len(group) >= DETECT_FRAMES or pixels >= DETECT_PIXELS:
            yield group
            group, pixels = [], 0
    if group:
        yield group
