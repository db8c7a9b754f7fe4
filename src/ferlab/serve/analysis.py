"""The work on one upload, wherever it runs: decoding (with the checks that come before any pixel is decoded),
the Predictor's answer for a photo or a video, and the answer's pieces as the API's models.

`ferlab serve` runs `analyse_photo` and `analyse_video` in its inference worker process (`serve.worker`, which
receives them pickled by name); an app given a predictor object runs them in a thread. Either way they are
called as `fn(predictor, lock, *args)` and raise HTTPException with a 4xx for the client's bad file. This
module imports neither `serve.app` nor `serve.worker`: both import it.
"""
from __future__ import annotations

import base64
import io
import math

import numpy as np
from fastapi import HTTPException
from PIL import Image
from pydantic import BaseModel, Field

from ..data.images import MAX_JPEG_SCANS, TooManyScans, check_jpeg_scans, upright_rgb

MAX_PIXELS = 40_000_000         # decoded-size limit: 40 MP is 120 MB of RGB
# formats with mature, header-first decoders; PIL's others (EPS, PSD, ...) are not worth the attack surface
FORMATS = ("JPEG", "PNG", "WEBP", "BMP", "GIF", "TIFF")
VIDEO_CONTAINERS = "MP4/MOV, WebM/Matroska or AVI"
# the annotated video's longer side at most (larger frames are scaled down after drawing): its size in the
# answer and its encoding time stay bounded whatever the upload's resolution
ANNOTATED_SIDE = 1280


class Face(BaseModel):
    """One face found in a photo or a video frame, and its expression."""
    source: str | None = Field(None, description="the uploaded file's name (videos; None for photos)")
    frame: int | None = Field(None, description="index of its video frame, from 0 (None for photos)")
    time_s: float | None = Field(None, description="time of its video frame, in seconds (None for photos)")
    box: list[int] = Field(description="face box in image pixels: [x, y, width, height]")
    score: float = Field(description="face detector confidence, 0-1 (mtcnn: face probability; haar / lbp: "
                                     "votes / (votes + threshold); 1 with detector none)")
    landmarks: dict[str, list[float]] | None = Field(
        None, description="the face's five landmarks, {name: [x, y]} in image pixels: left_eye, right_eye, nose, "
                          "mouth_left, mouth_right (left and right as the picture shows them); null from a detector "
                          "without landmarks (haar, lbp, none)")
    label: str = Field(description="the most probable expression")
    probs: dict[str, float] = Field(description="probability of every class")
    track: int | None = Field(None, description="the face's id across a video's frames, from 1 (None for photos)")
    heatmap: str | None = Field(None, description="with explain=true: a data:image/png;base64 RGBA picture the "
                                                  "size of `box`, to lay over it: where the label came from")


class VideoFrame(BaseModel):
    """One analysed frame of a video and the faces in it."""
    frame: int = Field(description="index of the frame in the video, from 0")
    time_s: float = Field(description="its time in the video, in seconds")
    faces: list[Face] = Field(description="the faces found in this frame, each with its track")


class ShareRow(BaseModel):
    """The emotion share of one analysed frame: a row of the emotion CSV."""
    time_s: float = Field(description="the frame's time in the video, in seconds")
    frame: int = Field(description="index of the frame in the video, from 0")
    faces: int = Field(description="faces seen in this frame")
    share: dict[str, float] | None = Field(description="mean of the frame's faces' probabilities; null with no face")


class Track(BaseModel):
    """One face followed across a video's frames, and its dominant expression."""
    track: int = Field(description="the face's id, as in each frame's faces, from 1")
    frames: int = Field(description="analysed frames in which this face was seen")
    first_s: float = Field(description="time of the first frame it was seen in, in seconds")
    last_s: float = Field(description="time of the last frame it was seen in, in seconds")
    label: str = Field(description="the dominant expression: the most probable class of the mean probabilities")
    probs: dict[str, float] = Field(description="mean probability of every class over the track's frames")


def decode_image(data: bytes, max_pixels: int = MAX_PIXELS, max_jpeg_scans: int = MAX_JPEG_SCANS) -> np.ndarray:
    """Untrusted image bytes -> upright RGB uint8 (H, W, 3), or HTTPException with a 4xx.

    The pixel count is read from the header and checked before decoding, so a small file that expands
    to gigabytes (a decompression bomb) is refused without allocating its pixels; so is a JPEG whose scans,
    each a pass over the whole image, would keep a decoder busy for minutes (`MAX_JPEG_SCANS`).
    """
    try:
        im = Image.open(io.BytesIO(data), formats=FORMATS)
    except Image.UnidentifiedImageError:
        raise HTTPException(415, f"not a supported image: expected one of {', '.join(FORMATS)} "
                                 f"(file starts with {data[:8]!r})") from None
    except Image.DecompressionBombError as e:
        raise HTTPException(413, f"image has too many pixels: {e}") from None
    except Exception as e:  # any header parser failure on untrusted bytes is the client's bad file
        raise HTTPException(400, f"corrupt image header: {e}") from None
    w, h = im.size
    limit = pixel_limit(max_pixels)
    if w * h > limit:
        raise HTTPException(413, f"image is {w}x{h} = {w * h:,} pixels; the limit is {limit:,}")
    if w < 1 or h < 1:
        raise HTTPException(400, f"image has no pixels ({w}x{h})")
    if im.format == "JPEG":
        try:
            check_jpeg_scans(data, "the image", max_jpeg_scans)
        except TooManyScans as e:
            raise HTTPException(413, str(e)) from None
    try:
        im.load()
        return upright_rgb(im)
    except Exception as e:  # truncated data, bad chunk CRCs, unsupported modes: all the file's fault
        raise HTTPException(400, f"could not decode the {im.format} image (truncated or corrupt?): {e}") from None


def sniff_video(head: bytes) -> str | None:
    """The file suffix for a plain video container recognised from its first bytes, or None."""
    if head[4:8] == b"ftyp":
        return ".mp4"   # ISO base media: MP4, MOV, M4V, 3GP
    if head[:4] == b"\x1a\x45\xdf\xa3":
        return ".mkv"   # EBML: Matroska and WebM
    if head[:4] == b"RIFF" and head[8:12] == b"AVI ":
        return ".avi"
    return None


def analyse_photo(predictor, lock, data: bytes, explain: bool, max_pixels: int,
                  max_jpeg_scans: int = MAX_JPEG_SCANS) -> tuple[tuple[int, int], list[Face]]:
    """Untrusted image bytes -> ((height, width), every face found, as `Face`, heat maps included with
    `explain`), or HTTPException with a 4xx. Decodes outside `lock`, analyses inside it."""
    rgb = None
    try:
        rgb = decode_image(data, max_pixels, max_jpeg_scans)
        with lock:
            if not explain:
                faces = predictor.predict(rgb)
            elif not callable(getattr(predictor, "explain", None)):
                raise HTTPException(400, "this server's model cannot explain its answers (an ONNX export "
                                         "has no gradients); ask without explain=true")
            else:
                try:
                    faces = predictor.explain(rgb)
                except ValueError as e:
                    raise HTTPException(400, str(e)) from None
        return rgb.shape[:2], [_face(f) for f in faces]
    finally:
        rgb = None
        _release_memory()


def analyse_live_frame(predictor, lock, data: bytes, session: str, index: int, time_s: float, max_pixels: int,
                       max_jpeg_scans: int = MAX_JPEG_SCANS) -> dict:
    """One frame of a live session: untrusted image bytes -> {"width", "height", "faces": [`Face` fields]}, or
    HTTPException with a 4xx. The frame goes through the Predictor's own per-frame path (`stream`) as frame
    `index` of the stream named `session`, marked live (answered at once, never held for a batch), so whatever
    the Predictor carries from one frame of a stream to the next (its face tracks) follows the session."""
    from ..inference.sources import Frame
    rgb = decode_image(data, max_pixels, max_jpeg_scans)
    height, width = rgb.shape[:2]
    with lock:
        [(_, faces)] = list(predictor.stream(Frame(rgb, source=session, frame=index, time_s=time_s, live=True)))
    return dict(width=width, height=height, faces=[_face(f).model_dump() for f in faces])


def analyse_video(predictor, lock, path: str, filename: str | None, every: int, max_frames: int,
                  max_pixels: int, annotated: str | None = None) -> dict:
    """The faces of a video file, frame by frame, with the summary (rows and CSV) and the timeline: the fields of
    `VideoPrediction` that depend on the video. With `annotated` (a path), the analysed frames with their faces
    drawn are written there as an H.264 MP4 (`annotate_video`). Raises HTTPException (4xx) for a video that
    cannot be read."""
    import cv2

    from ..inference.video import VideoSummary
    name = filename or "video"
    cap = cv2.VideoCapture(path)
    try:
        if not cap.isOpened():
            raise HTTPException(415, f"could not open {name} as a video (OpenCV/FFmpeg refused it); "
                                     f"expected {VIDEO_CONTAINERS} with a common codec (H.264, VP8/9, MPEG-4)")
        width, height = int(cap.get(cv2.CAP_PROP_FRAME_WIDTH)), int(cap.get(cv2.CAP_PROP_FRAME_HEIGHT))
        fps = float(cap.get(cv2.CAP_PROP_FPS) or 0) or None
        total = int(cap.get(cv2.CAP_PROP_FRAME_COUNT) or 0)
        total = total if total > 0 else None
    finally:
        cap.release()
    limit = pixel_limit(max_pixels)
    if width * height > limit:
        raise HTTPException(413, f"video frames are {width}x{height} = {width * height:,} pixels; the limit is {limit:,}")
    asked = every
    if total is not None:
        every = max(every, math.ceil(total / max_frames))
    frames, summary = [], VideoSummary(name, tuple(str(c) for c in predictor.classes))
    stopped = False
    with lock:
        try:
            for fr, faces in predictor.stream(path, every):
                if len(frames) == max_frames:  # the container understated its length
                    stopped = True
                    break
                summary.add(fr.frame, fr.time_s, faces)
                frames.append(VideoFrame(frame=int(fr.frame), time_s=float(fr.time_s or 0.0),
                                         faces=[_face({**f, "source": filename}) for f in faces]))
        except ValueError as e:  # OpenCV opened it but no frame decodes: a truncated or corrupt file
            raise HTTPException(400, str(e).replace(path, name)) from None
        if not frames:
            raise HTTPException(400, f"{name}: no frames could be decoded (truncated or corrupt?)")
        png = summary.timeline_png()
    notes = []
    if every > asked:
        notes.append(f"the video has {total} frames: 1 in {every} analysed, to stay within the limit of "
                     f"{max_frames} frames")
    if stopped:
        notes.append(f"stopped after {max_frames} frames (the server's limit)")
    if annotated is not None:
        annotate_video(path, frames, every, annotated, name)
    return dict(width=width, height=height, fps=fps, frames_total=total, every=every, frames_analysed=len(frames),
                max_frames=max_frames, note="; ".join(notes) or None, frames=frames,
                summary=[ShareRow(time_s=t, frame=f, faces=n, share=None if share is None else
                                  {c: round(float(v), 6) for c, v in zip(summary.classes, share)})
                         for t, f, n, share in summary.rows],
                emotions_csv=summary.csv_text(),
                tracks=_tracks(frames, summary.classes),
                timeline_png=_png_data_url(png))


def annotate_video(path: str, frames: list[VideoFrame], every: int, out: str, name: str = "video",
                   max_side: int | None = None) -> None:
    """The analysed `frames` of the video at `path` (every `every`-th frame, as analysed), each face's box, track
    and label drawn as `ferlab predict --save` draws them, written to `out` as an H.264 MP4 (which browsers
    play) at the analysed frames' rate, scaled so that its longer side is at most `max_side`. The frames are
    decoded again, one at a time, rather than kept through the analysis: memory stays one frame whatever the
    video's length. `max_side` defaults to ANNOTATED_SIDE. Raises HTTPException 503 when the video cannot be
    written (a full disk)."""
    import cv2

    from .._atomic import WriteError
    from ..inference.draw import draw_faces
    from ..inference.sources import iter_frames
    from ..inference.video import H264Writer
    max_side = max_side or ANNOTATED_SIDE
    faces = {fr.frame: [f.model_dump() for f in fr.faces] for fr in frames}
    last = frames[-1].frame
    writer = None
    try:
        for fr in iter_frames(path, every):
            if fr.frame > last:
                break
            if fr.frame not in faces:  # cannot happen with the same file and `every`; never drawn without its faces
                continue
            img = draw_faces(fr.image, faces[fr.frame])
            fr.image = None
            h, w = img.shape[:2]
            if max(h, w) > max_side:
                scale = max_side / max(h, w)
                img = cv2.resize(img, (max(2, round(w * scale)), max(2, round(h * scale))), interpolation=cv2.INTER_AREA)
            if writer is None:
                writer = H264Writer(out, fr.fps or 25.0, (img.shape[1], img.shape[0]))
            writer.write(img)
        if writer is not None:
            writer.close()
    except WriteError as e:
        if writer is not None:
            writer.abort()
        raise HTTPException(503, f"could not write the annotated video of {name}: {e.reason}") from None
    except BaseException:
        if writer is not None:
            writer.abort()
        raise


def _tracks(frames: list[VideoFrame], classes) -> list[Track]:
    """Each track's frames, time span and mean probabilities; its label is the class those make most likely."""
    seen: dict[int, list[tuple[float, dict]]] = {}
    for fr in frames:
        for f in fr.faces:
            if f.track is not None:
                seen.setdefault(f.track, []).append((fr.time_s, f.probs))
    out = []
    for tid, rows in sorted(seen.items()):
        mean = {c: float(np.mean([p[c] for _, p in rows])) for c in classes}
        out.append(Track(track=tid, frames=len(rows), first_s=rows[0][0], last_s=rows[-1][0],
                         label=max(mean, key=mean.get), probs={c: round(v, 6) for c, v in mean.items()}))
    return out


def _release_memory() -> None:
    """Hand freed pixel buffers back to the OS (glibc keeps large freed blocks in its arenas otherwise, and the
    server's memory would stay at its peak after a burst of big uploads). A no-op where there is no glibc."""
    if _TRIM is not None:
        _TRIM(0)


def _glibc():
    try:
        import ctypes
        libc = ctypes.CDLL("libc.so.6")
        return libc if hasattr(libc, "malloc_trim") and hasattr(libc, "mallopt") else None
    except OSError:
        return None


_LIBC = _glibc()


_TRIM = _LIBC.malloc_trim if _LIBC is not None else None


M_MMAP_THRESHOLD = -3


def map_big_buffers(threshold: int = 1 << 20) -> bool:
    """Give every buffer over `threshold` bytes its own memory map (glibc's M_MMAP_THRESHOLD, fixed).

    glibc raises that threshold after the first big free; from then on a 120 MB pixel buffer comes from the
    heap, and PIL zeroes it while it holds the GIL: tens of milliseconds in which the event loop, `/health`
    included, cannot run. A mapped buffer comes zeroed from the kernel and goes back to the OS when freed.
    Process-wide; False (and nothing changed) where there is no glibc.
    """
    return _LIBC is not None and bool(_LIBC.mallopt(M_MMAP_THRESHOLD, threshold))


def pixel_limit(max_pixels: int) -> int:
    """The pixel limit in force: `max_pixels`, capped by PIL's own bomb threshold (`Image.MAX_IMAGE_PIXELS`),
    so nothing PIL would flag as a decompression bomb is ever decoded."""
    return min(max_pixels, Image.MAX_IMAGE_PIXELS or max_pixels)


def _face(f: dict) -> Face:
    """Predictor output -> plain JSON types (numpy scalars are not serialisable)."""
    return Face(source=f.get("source"), frame=None if f.get("frame") is None else int(f["frame"]),
                time_s=None if f.get("time_s") is None else float(f["time_s"]),
                box=[int(round(float(v))) for v in f["box"]], score=float(f["score"]), label=str(f["label"]),
                landmarks=None if f.get("landmarks") is None else
                {str(k): [float(x), float(y)] for k, (x, y) in f["landmarks"].items()},
                probs={str(k): float(v) for k, v in f["probs"].items()},
                track=None if f.get("track") is None else int(f["track"]),
                heatmap=None if f.get("heatmap") is None else _heatmap_png(f["heatmap"]))


def _heatmap_png(cam: np.ndarray) -> str:
    from ..inference.explain import heatmap_rgba  # torch: only where the model is
    buf = io.BytesIO()
    Image.fromarray(heatmap_rgba(cam), "RGBA").save(buf, format="PNG")
    return _png_data_url(buf.getvalue())


def _png_data_url(png: bytes) -> str:
    return "data:image/png;base64," + base64.b64encode(png).decode("ascii")


def describe_predictor(predictor, model: str, detector: str) -> tuple[str, str]:
    """(model name, detector name) for /health; an injected predictor may differ from the arguments."""
    classifier = getattr(predictor, "classifier", None)
    model_name = getattr(classifier, "name", None) or str(model)
    detector_name = getattr(getattr(predictor, "detector", None), "name", None) or str(detector)
    return str(model_name), detector_name

