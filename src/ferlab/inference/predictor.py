"""Predictor: faces in photos, folders, videos and cameras -> expression probabilities.

Each face becomes one dict, the contract the CLI and the REST server share:
    {"source": str | None, "frame": int | None, "time_s": float | None, "box": [x, y, w, h],
     "score": float, "label": str, "probs": {class_name: float}}
Frames are streamed and faces batched through the model, so memory stays flat on long videos.
"""
from __future__ import annotations

import logging
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import numpy as np
import torch
from PIL import Image

from .._atomic import WriteError, replacing
from ..data.images import TooManyScans, check_jpeg_scans, rgb_array, upright_rgb
from ..engine.trainer import tta_views
from .detect import detect_many, make_detector
from .faces import crop_faces, crops_to_input, crops_to_pixels, eye_angle, to_gray
from .video import IoUTracker

log = logging.getLogger("ferlab.predict")

IMAGE_EXTS = {".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff"}
VIDEO_EXTS = {".mp4", ".avi", ".mov", ".mkv", ".webm", ".m4v", ".mpg", ".mpeg", ".wmv"}
# Turning faces upright by their eyes before the crop: measured by bench/align_eval.py (see the README)
ALIGN = True
PENDING_FRAMES = 32  # frames held while their faces wait for a full batch (1080p RGB: 6 MB each)
# frames whose faces are looked for in one batched detector pass (bench/predict_speed.py times it against one
# photo at a time), unless their pixels reach DETECT_PIXELS first (the pyramid's memory grows with them); a
# camera's frames are never held back
DETECT_FRAMES = 8
DETECT_PIXELS = 4_000_000


@dataclass
class Frame:
    """One picture to look at: a still image (frame None) or a video frame."""
    image: np.ndarray | None   # (H, W, 3) RGB or (H, W) gray, uint8; None once used, unless kept
    source: str | None = None
    frame: int | None = None
    time_s: float | None = None
    root: Path | None = None   # the folder it was found in, so saved copies keep their relative path
    fps: float | None = None   # frames per second of the sampled stream (video only)
    live: bool = False         # a camera: answer every frame at once instead of filling a batch
    item: int = 0              # index of the input it came from, when several were given as a list
    error: str | None = None   # set (and no image) for an input that could not be read, in its place in order


class TorchClassifier:
    """A checkpoint's network: model input (N, C, S, S) -> probabilities (N, classes)."""

    def __init__(self, ckpt: dict, device: str = "cpu"):
        from ..engine.checkpoint import model_from_checkpoint
        from ..engine.trainer import resolve_device
        self.device = resolve_device(device)
        model, self.pre = model_from_checkpoint(ckpt)
        # on the CPU, oneDNN's convolutions run faster on channels-last tensors (measured 1.3-1.9x for vgg_s)
        self.memory_format = torch.channels_last if self.device.type == "cpu" else torch.contiguous_format
        self.model = model.to(self.device, memory_format=self.memory_format)
        self.classes = tuple(ckpt["classes"])
        self.name = ckpt["model"]

    @torch.no_grad()
    def __call__(self, x: torch.Tensor) -> np.ndarray:
        x = x.to(self.device).contiguous(memory_format=self.memory_format)
        return self.model(x).float().softmax(1).cpu().numpy()


def load_classifier(model: str | Path = "default", device: str = "cpu"):
    """"default" (the packaged weights), a run folder, a .pt checkpoint, or a .onnx export."""
    from ..engine.checkpoint import load_checkpoint
    from ..weights import resolve_model
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
    """

    def __init__(self, model: str | Path = "default", detector: str = "mtcnn", device: str = "cpu",
                 batch_size: int = 64, tta: bool = True, align: bool = ALIGN, **detector_kwargs):
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        self.tta, self.align = bool(tta), bool(align)
        self.classifier = load_classifier(model, device)
        self.device = self.classifier.device if isinstance(self.classifier, TorchClassifier) else "cpu"
        if detector == "mtcnn":
            detector_kwargs.setdefault("device", self.device)
        self.detector = make_detector(detector, **detector_kwargs)
        self.batch_size = batch_size
        self._tracker, self._track_at = IoUTracker(), (None, -1)  # video faces keep an id from frame to frame

    @property
    def classes(self) -> tuple[str, ...]:
        return self.classifier.classes

    @property
    def preprocess(self):
        """The model's `Preprocess` (input size, channels, mean/std), read from its checkpoint or ONNX file."""
        return self.classifier.pre

    def predict(self, source, every: int = 1, color: str = "rgb") -> list:
        """Faces in `source`: a path (image, folder searched recursively, video), a PIL image, or a numpy
        uint8 image ((H, W, 3) RGB, or BGR as OpenCV gives it with `color="bgr"`, or (H, W) gray). A list or
        tuple of any of these gives one list of faces per item, in order (faces are still classified in
        batches across the items). Unreadable files raise."""
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
        """The faces of one picture (a path, numpy RGB / gray, or PIL) as `predict` gives them, each with
        "heatmap": its Grad-CAM map for the reported label, float32 (h, w) in 0..1 over the face's box (turned
        back where the crop was aligned). With TTA the map is the mean of the face's and of its mirror's
        (flipped back), as the label is the mean of their probabilities."""
        from .explain import grad_cam
        if not isinstance(self.classifier, TorchClassifier):
            raise ValueError("explaining needs the PyTorch model's gradients; an ONNX export has none: pass the "
                             "run folder or .pt checkpoint it came from")
        rgb = read_image(image) if isinstance(image, (str, Path)) else _as_array(image)
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
        the item a frame came from when `source` is a list). With an `errors` list, unreadable files are
        appended to it as (path, reason) and skipped; without one they raise. Frames keep their pixels only
        with `keep_images` (to draw on them); at most PENDING_FRAMES of them wait for a batch. A video file
        still going after `video_timeout_s` seconds is stopped there, as an error of that file (its frames so
        far kept)."""
        if color not in ("rgb", "bgr"):
            raise ValueError(f"color must be 'rgb' or 'bgr' (the channel order of numpy images), got {color!r}")
        pending: list[tuple[Frame, list]] = []
        crops: list[np.ndarray] = []
        for group in _detect_groups(_frames(source, every, errors, progress, color, video_timeout_s)):
            found = iter(self._detect_many([fr.image for fr in group if fr.error is None]))
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

    def _detect(self, image: np.ndarray) -> tuple[list, list[np.ndarray]]:
        """The faces in one picture (RGB or gray) and their grey crops, turned upright with `align`."""
        return self._detect_many([image])[0]

    def _detect_many(self, images: list[np.ndarray]) -> list[tuple[list, list[np.ndarray]]]:
        """`_detect` for several pictures, in one batched detector pass where the detector can batch."""
        if not images:
            return []
        grays = [to_gray(im) for im in images]
        found = detect_many(self.detector, grays, images)  # detectors that look at colour use it only if there is any
        return [(faces, crop_faces(gray, faces, self.align)) for gray, faces in zip(grays, found)]

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
                            "label": self.classes[int(p.argmax())],
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


def _frames(source, every: int, errors: list | None, progress: bool, color: str,
            video_timeout_s: float | None = None) -> Iterator[Frame]:
    """Frames of one source or of a list of them, each tagged with the index of its item in the list."""
    if not isinstance(source, (list, tuple)) or all(isinstance(s, (str, Path)) for s in source):
        if isinstance(source, (np.ndarray, Image.Image)):
            yield Frame(_as_array(source, color))
            return
        yield from iter_frames(source, every, errors, progress, video_timeout_s)  # frames carry their item
        return
    for i, item in enumerate(source):
        if isinstance(item, (np.ndarray, Image.Image)):
            yield Frame(_as_array(item, color), item=i)
        else:
            for fr in iter_frames(item, every, errors, False, video_timeout_s):
                fr.item = i
                yield fr


def _as_array(image, color: str = "rgb") -> np.ndarray:
    if isinstance(image, Image.Image):
        return rgb_array(image)
    a = np.asarray(image)
    if color == "bgr" and a.ndim == 3 and a.shape[2] in (3, 4):  # OpenCV's order -> RGB(A)
        a = a[..., [2, 1, 0, 3][:a.shape[2]]]
    return a


def expand_sources(source) -> list[tuple[str, Path | None]]:
    """Paths -> (file or camera index, folder it came from); folders searched recursively, sorted."""
    return [(path, root) for path, root, _ in _expand(source)]


def _expand(source) -> list[tuple[str, Path | None, int]]:
    """`expand_sources`, each file with the index of the item of `source` it came from."""
    items = source if isinstance(source, (list, tuple)) else [source]
    out = []
    for i, item in enumerate(items):
        s = str(item)
        p = Path(s)
        if p.is_dir():
            found = sorted(f for f in p.rglob("*") if f.is_file() and f.suffix.lower() in IMAGE_EXTS | VIDEO_EXTS)
            out += [(str(f), p, i) for f in found] or [(s, None, i)]  # an empty folder: an input that fails
        else:
            out.append((s, None, i))
    return out


def iter_frames(source, every: int = 1, errors: list | None = None, progress: bool = False,
                video_timeout_s: float | None = None) -> Iterator[Frame]:
    """Frames of images, videos (every `every`-th frame) and camera indices, decoded one at a time; a video
    file is stopped with a ValueError once `video_timeout_s` seconds have passed since its first frame
    (the time its consumer spends on the frames counts: it runs between them)."""
    if every < 1:
        raise ValueError(f"every must be >= 1, got {every}")
    items = _expand(source)
    bar = _bar(len(items), "file", progress and len(items) > 1)
    for path, root, item in items:
        try:
            if Path(path).is_dir():  # only an empty folder stays one after _expand
                raise ValueError(f"{path}: a folder without images or videos (looked for "
                                 f"{', '.join(sorted(IMAGE_EXTS | VIDEO_EXTS))}, in its subfolders too)")
            if path.isdigit() and not Path(path).exists():
                frames = _video_frames(int(path), every, progress)
            elif Path(path).suffix.lower() in VIDEO_EXTS:
                frames = _video_frames(path, every, progress, root, video_timeout_s)
            else:
                frames = iter([Frame(read_image(path), path, root=root)])
            for fr in frames:
                fr.item = item
                yield fr
        except (OSError, ValueError) as e:
            if errors is None:
                raise
            errors.append((path, str(e)))
            log.warning("skipping: %s", e)
            yield Frame(None, path, item=item, error=str(e))
        bar.update()
    bar.close()


def read_image(path: str | Path) -> np.ndarray:
    """RGB uint8 (H, W, 3), upright per the EXIF orientation (phones store photos rotated)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such file")
    try:
        with Image.open(path) as im:
            if im.format == "JPEG":
                check_jpeg_scans(path.read_bytes(), str(path))
            return upright_rgb(im)
    except Image.DecompressionBombError as e:  # a header claiming more pixels than PIL's limit (2 x 89 MP)
        raise ValueError(f"{path}: too many pixels to decode safely ({e})") from None
    except TooManyScans:
        raise
    except Exception as e:  # any decoder failure on a bad file is that file's fault, never the run's end
        raise ValueError(f"{path}: cannot read as an image ({e}); expected one of "
                         f"{', '.join(sorted(IMAGE_EXTS))} or a video ({', '.join(sorted(VIDEO_EXTS))})") from e


def _video_frames(source, every: int, progress: bool, root: Path | None = None,
                  timeout_s: float | None = None) -> Iterator[Frame]:
    import cv2
    cap = cv2.VideoCapture(source)
    if not cap.isOpened():
        what = f"camera {source}" if isinstance(source, int) else f"{source}: cannot open as a video"
        raise ValueError(f"{what} (OpenCV could not open it)")
    name = f"camera:{source}" if isinstance(source, int) else str(source)
    fps = cap.get(cv2.CAP_PROP_FPS) or 0.0
    total = int(cap.get(cv2.CAP_PROP_FRAME_COUNT) or 0)
    bar = _bar(total or None, "frame", progress and not isinstance(source, int))
    t0, i = time.monotonic(), 0
    try:
        while True:
            if timeout_s is not None and time.monotonic() - t0 > timeout_s:
                raise ValueError(f"{name}: stopped at frame {i} after {timeout_s:g} s, its time budget (--timeout); "
                                 "the frames before it were analysed")
            if i % every:
                if not cap.grab():  # skipped frames are not decoded
                    break
            else:
                ok, bgr = cap.read()
                if not ok:
                    break
                t = i / fps if fps > 0 and isinstance(source, str) else time.monotonic() - t0
                yield Frame(cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB), name, i, round(t, 6), root,
                            fps / every if fps > 0 else None, live=isinstance(source, int))
            i += 1
            bar.update()
    finally:
        cap.release()
        bar.close()
    if i == 0:
        raise ValueError(f"{name}: no frames could be decoded")


def _bar(total, unit: str, enabled: bool):
    from tqdm import tqdm
    return tqdm(total=total, unit=unit, disable=not enabled, leave=False, dynamic_ncols=True)


def free_name(path: Path, taken=(), inputs=frozenset()) -> Path:
    """`path` if no file has that name yet, else the first free one of x_annotated.jpg (when x.jpg is one of
    `inputs`, as `_file_id`s), x-2.jpg, x-3.jpg, ...: ferlab's outputs never replace a file, be it an input
    (`--save` into the inputs' own folder), another file the user keeps there, or one in `taken` (the copies
    this run wrote: a/x.jpg and b/x.jpg both given)."""
    if _file_id(path) in inputs:
        path = path.with_name(f"{path.stem}_annotated{path.suffix}")
    stem, i = path.stem, 2
    while path in taken or os.path.lexists(path):
        path, i = path.with_name(f"{stem}-{i}{path.suffix}"), i + 1
    return path


def _file_id(path) -> tuple[int, int] | None:
    """(device, inode) of an existing file, the same for every name of it (links, ./a.png, ../x/a.png)."""
    try:
        st = os.stat(path)
    except (OSError, ValueError):
        return None
    return (st.st_dev, st.st_ino)


def draw_faces(image: np.ndarray, faces: list[dict]) -> np.ndarray:
    """A copy of `image` (RGB or gray) as RGB with each face's box, label and probability drawn on it."""
    import cv2
    out = np.ascontiguousarray(np.stack([image] * 3, -1) if image.ndim == 2 else image[..., :3]).copy()
    thick = max(1, round(max(out.shape[:2]) / 400))
    for f in faces:
        x, y, w, h = f["box"]
        cv2.rectangle(out, (x, y), (x + w, y + h), (255, 64, 0), thick)
        text = (f"#{f['track']} " if f.get("track") is not None else "") + f"{f['label']} {f['probs'][f['label']]:.2f}"
        scale = max(0.4, w / 250)
        (tw, th), base = cv2.getTextSize(text, cv2.FONT_HERSHEY_SIMPLEX, scale, thick)
        ty = y - 4 if y - th - base - 4 >= 0 else y + h + th + 4  # below the box when no room above
        cv2.rectangle(out, (x, ty - th - base), (x + tw, ty + base), (255, 64, 0), -1)
        cv2.putText(out, text, (x, ty), cv2.FONT_HERSHEY_SIMPLEX, scale, (255, 255, 255), thick, cv2.LINE_AA)
    return out


class AnnotatedWriter:
    """`--save DIR`: annotated copies of images; per video, an annotated H.264 MP4 (frames as sampled) and its
    summary, the emotion share over time as `<video>_emotions.csv` and `<video>_timeline.png`. Each file
    appears whole or not at all: one that cannot be written (disk full) raises WriteError and leaves nothing;
    `written` lists the files complete so far."""

    def __init__(self, out_dir: str | Path, classes: tuple[str, ...], inputs=()):
        self.out_dir = Path(out_dir)
        self.classes = tuple(classes)
        self.written: list[Path] = []
        self._inputs = {_file_id(p) for p, _ in expand_sources(list(inputs))} - {None}  # never written over
        self._video = None
        self._video_source = None
        self._summary = None
        self._summary_stem: Path | None = None

    def _target(self, fr: Frame, suffix: str | None = None) -> Path:
        src = Path(fr.source or "image.png")
        rel = src.relative_to(fr.root) if fr.root is not None else Path(src.name)
        if fr.root is not None:
            rel = Path(fr.root.name) / rel
        if suffix:
            rel = rel.with_name(rel.stem + suffix)
        path = self.out_dir / rel
        if fr.frame is None and path.suffix.lower() not in IMAGE_EXTS:
            path = path.with_suffix(".png")
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise WriteError.from_os(path.parent, e) from None
        return self._free(path)

    def _free(self, path: Path) -> Path:
        return free_name(path, self.written, self._inputs)

    def write(self, fr: Frame, faces: list[dict]):
        from .video import H264Writer, VideoSummary
        img = draw_faces(fr.image, faces)
        if fr.frame is None:
            self.close_video()
            path = self._target(fr)
            with replacing(path) as tmp:
                Image.fromarray(img).save(tmp)
            self.written.append(path)
            return
        if fr.source != self._video_source:
            self.close_video()
            path = self._target(fr, "_annotated.mp4")
            h, w = img.shape[:2]
            self._video = H264Writer(path, fr.fps or 25.0, (w, h))
            self._video_source = fr.source
            self._summary = VideoSummary(str(fr.source), self.classes)
            self._summary_stem = path.with_name("".join(path.stem.rsplit("_annotated", 1)))  # x_annotated-2 -> x-2
        self._video.write(img)
        self._summary.add(fr.frame, fr.time_s, faces)

    def close_video(self):
        video, summary, stem = self._video, self._summary, self._summary_stem
        self._video, self._video_source, self._summary = None, None, None
        if video is None:
            return
        video.close()
        self.written.append(video.path)
        for suffix, write in (("_emotions.csv", summary.write_csv), ("_timeline.png", summary.write_timeline)):
            self.written.append(write(self._free(stem.with_name(stem.name + suffix))))

    def discard(self):
        """Stop saving: the video being written is dropped unfinished (its temporary file removed)."""
        if self._video is not None:
            self._video.abort()
        self._video, self._video_source, self._summary = None, None, None
