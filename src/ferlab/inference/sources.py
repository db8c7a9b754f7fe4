"""Sources -> frames: image files, folders (searched recursively), videos, camera indices, encoded image bytes
and in-memory pictures (numpy, PIL), each turned into `Frame`s of RGB (or grey) uint8 pixels, one at a time.

What a frame came from travels with it (its source, frame index and time, the folder it was found in, the
item of a list), so the faces found in it can be reported, and saved copies named, in input order. A file that
cannot be read is a ValueError naming it and what was expected; `iter_frames` with an `errors` list records it
and yields an error frame in its place instead.
"""
from __future__ import annotations

import io
import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import numpy as np
from PIL import Image

from ..data.images import TooManyScans, check_jpeg_scans, rgb_array, upright_rgb

log = logging.getLogger("ferlab.predict")

IMAGE_EXTS = {".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff"}
VIDEO_EXTS = {".mp4", ".avi", ".mov", ".mkv", ".webm", ".m4v", ".mpg", ".mpeg", ".wmv"}
BYTES = (bytes, bytearray, memoryview)  # encoded image bytes (PNG, JPEG, ...), as read from a file or a socket
ENCODINGS = "PNG, JPEG, WebP, BMP, GIF or TIFF"  # what PIL decodes of IMAGE_EXTS, named for error messages


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


def frames(source, every: int = 1, errors: list | None = None, progress: bool = False, color: str = "rgb",
           video_timeout_s: float | None = None) -> Iterator[Frame]:
    """Frames of anything `Predictor.predict` takes: a path, a numpy or PIL picture, encoded image bytes, or a
    list of any of these, each frame tagged with the index of its item in the list. A `Frame` made by the caller
    (a live stream's, given one at a time as it arrives) comes through as it is."""
    if isinstance(source, Frame):
        yield source
        return
    if not isinstance(source, (list, tuple)) or all(isinstance(s, (str, Path)) for s in source):
        if isinstance(source, (np.ndarray, Image.Image, *BYTES)):
            yield _in_memory(source, color, errors)
            return
        yield from iter_frames(source, every, errors, progress, video_timeout_s)  # frames carry their item
        return
    for i, item in enumerate(source):
        if isinstance(item, (np.ndarray, Image.Image, *BYTES)):
            yield _in_memory(item, color, errors, i)
        else:
            for fr in iter_frames(item, every, errors, False, video_timeout_s):
                fr.item = i
                yield fr


def _in_memory(image, color: str, errors: list | None, item: int | None = None) -> Frame:
    """A frame of a picture given in memory (as item `item` of a list); undecodable bytes are an error frame where
    `errors` collects them."""
    if not isinstance(image, BYTES):
        return Frame(as_array(image, color), item=item or 0)
    name = "image bytes" if item is None else f"image bytes (item {item})"
    item = item or 0
    try:
        return Frame(decode_image(image, name), item=item)
    except ValueError as e:
        if errors is None:
            raise
        errors.append((name, str(e)))
        log.warning("skipping: %s", e)
        return Frame(None, item=item, error=str(e))


def as_array(image, color: str = "rgb") -> np.ndarray:
    """A PIL image or a numpy picture as a numpy array, RGB(A) or gray; `color="bgr"`: OpenCV's channel order."""
    if isinstance(image, Image.Image):
        return rgb_array(image)
    a = np.asarray(image)
    if color == "bgr" and a.ndim == 3 and a.shape[2] in (3, 4):  # OpenCV's order -> RGB(A)
        a = a[..., [2, 1, 0, 3][:a.shape[2]]]
    return a


def to_rgb(image, color: str = "rgb") -> np.ndarray:
    """One picture as a numpy array: a path is read (`read_image`), bytes decoded (`decode_image`), a numpy or
    PIL picture taken as it is (`as_array`)."""
    if isinstance(image, (str, Path)):
        return read_image(image)
    if isinstance(image, BYTES):
        return decode_image(image)
    return as_array(image, color)


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
                found = _video_frames(int(path), every, progress)
            elif Path(path).suffix.lower() in VIDEO_EXTS:
                found = _video_frames(path, every, progress, root, video_timeout_s)
            else:
                found = iter([Frame(read_image(path), path, root=root)])
            for fr in found:
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


def decode_image(data: bytes, name: str = "image bytes") -> np.ndarray:
    """Encoded image bytes (ENCODINGS) -> RGB uint8 (H, W, 3), upright per the EXIF orientation. Bytes that are
    no image are a ValueError saying what was expected and how they start; pixel bombs and JPEGs of too many
    scans are refused before decoding, as files are (`read_image`)."""
    if not isinstance(data, BYTES):
        raise TypeError(f"expected encoded image bytes (bytes, bytearray or memoryview), got {type(data).__name__}")
    data = bytes(data)
    if not data:
        raise ValueError(f"{name}: empty; expected the bytes of an encoded image ({ENCODINGS})")
    try:
        with Image.open(io.BytesIO(data)) as im:
            if im.format == "JPEG":
                check_jpeg_scans(data, name)
            return upright_rgb(im)
    except Image.DecompressionBombError as e:
        raise ValueError(f"{name}: too many pixels to decode safely ({e})") from None
    except TooManyScans:
        raise
    except Exception as e:
        raise ValueError(f"{name}: cannot decode as an image ({type(e).__name__}: {e}); expected the bytes of an "
                         f"encoded image ({ENCODINGS}), got bytes starting {data[:8]!r}. A path must be a str or "
                         "pathlib.Path; a numpy array or a PIL image is taken as it is") from None


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
