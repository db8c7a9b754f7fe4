"""What /docs and /redoc say about each endpoint beyond its models: a description, an example answer, and an
example of each error with what causes it. Kept apart from `app` so that the endpoints read as code.

The examples are shaped like real answers (a test checks each against its model), with the numbers shortened.
"""
from __future__ import annotations

from ..data.classes import CLASSES as _CLASSES
from .analysis import ANNOTATED_SIDE, VIDEO_CONTAINERS

CLASSES = list(_CLASSES)
_PROBS = {"angry": 0.012, "disgust": 0.001, "fear": 0.031, "happy": 0.902, "sad": 0.011, "surprise": 0.024,
          "neutral": 0.019}

HEALTH = """Liveness, and what this server runs: the model, the face detector, the class names in the order of every
`probs`, the upload limits and ferlab's version. Answered on the event loop, never queued behind uploads."""

PREDICT = """Upload one photo as `multipart/form-data` in the field `file`:

    curl -F file=@photo.jpg http://127.0.0.1:8000/v1/predict

Every face found gets its box, the detector's confidence, the most probable expression and the probability of
each class. With `explain=true` each face also gets a heat map (HiResCAM) of the regions that drove its label.
No face found: `faces` is empty and `message` says what to try.

Limits (see `/health`): the upload's size (`max_bytes`) and its pixels (`max_pixels`, read from the image's
header before anything is decoded). A video sent here is refused with a 415 that points to `/v1/video`."""

VIDEO = f"""Upload one video ({VIDEO_CONTAINERS}) as `multipart/form-data` in the field `file`:

    curl -F file=@clip.mp4 'http://127.0.0.1:8000/v1/video?every=5&annotate=true'

Every `every`-th frame is analysed, at most `max_video_frames` of them (see `/health`): a longer video is sampled
more sparsely and `note` says so. Faces are followed from frame to frame (`track`); `tracks` gives each face's
dominant expression, `summary` the emotion share of each analysed frame, `emotions_csv` the same as the CSV
that `ferlab predict --save` writes, and `timeline_png` its plot. With `annotate=true`, `annotated_video` holds
the analysed frames with each face's box and label drawn, as an H.264 MP4 (a `data:video/mp4;base64` URL, at
most {ANNOTATED_SIDE} px on its longer side). A photo sent here is refused with a 415 that points to
`/v1/predict`."""

_FACE = {"source": None, "frame": None, "time_s": None, "box": [212, 98, 121, 121], "score": 0.998,
         "label": "happy", "probs": _PROBS, "track": None, "heatmap": None}

HEALTH_EXAMPLE = {"status": "ok", "model": "vgg_s", "detector": "mtcnn", "classes": CLASSES,
                  "max_bytes": 10485760, "max_pixels": 40000000, "max_video_bytes": 52428800,
                  "max_video_frames": 150, "version": "0.1.0"}

PREDICT_EXAMPLE = {"filename": "photo.jpg", "width": 512, "height": 512, "faces": [_FACE], "message": None,
                   "model": "vgg_s", "classes": CLASSES, "elapsed_ms": 61.3}

_VIDEO_FACE = {**_FACE, "source": "clip.mp4", "frame": 0, "time_s": 0.0, "track": 1}
_SHARE = ",".join(f"{v:.4f}" for v in _PROBS.values())
VIDEO_EXAMPLE = {
    "filename": "clip.mp4", "width": 640, "height": 360, "fps": 25.0, "frames_total": 50, "every": 5,
    "frames_analysed": 10, "max_frames": 150, "note": None,
    "frames": [{"frame": 0, "time_s": 0.0, "faces": [_VIDEO_FACE]},
               {"frame": 5, "time_s": 0.2, "faces": [{**_VIDEO_FACE, "frame": 5, "time_s": 0.2}]}],
    "summary": [{"time_s": 0.0, "frame": 0, "faces": 1, "share": _PROBS},
                {"time_s": 0.2, "frame": 5, "faces": 1, "share": _PROBS}],
    "emotions_csv": f"time_s,frame,faces,{','.join(CLASSES)}\r\n0.000,0,1,{_SHARE}\r\n0.200,5,1,{_SHARE}\r\n",
    "tracks": [{"track": 1, "frames": 10, "first_s": 0.0, "last_s": 1.8, "label": "happy", "probs": _PROBS}],
    "timeline_png": "data:image/png;base64,iVBORw0KGgoAAAANSUhEUgAAA+gAAAFoCAYAAADU...",
    "annotated_video": "data:video/mp4;base64,AAAAIGZ0eXBpc29tAAACAGlzb21pc28yYXZjMW1wNDEAAAAIZnJlZQ...",
    "model": "vgg_s", "classes": CLASSES, "elapsed_ms": 2843.6,
}

# status -> (when it is answered, an example of its detail), for the uploads
_ERRORS = {
    400: ("the upload is empty, truncated or corrupt, or the request is malformed",
          "could not decode the JPEG image (truncated or corrupt?): image file is truncated"),
    403: ("the request came from another site's page, or named a Host that is not this server",
          "a page at 'https://example.com' may not use this server (cross-site request); allow it with "
          "ferlab serve --allow-origin"),
    413: ("the upload is over the size limit, or its picture over the pixel limit",
          "file is larger than the 10 MiB limit"),
    415: ("not multipart/form-data, or the file is not of a kind this endpoint takes",
          "not a supported image: expected one of JPEG, PNG, WEBP, BMP, GIF, TIFF (file starts with b'%PDF-1.7')"),
    422: ("no field 'file' in the form, or a query parameter out of range",
          "expected multipart/form-data with the upload in field 'file'; body.file: Field required"),
    503: ("the server is busy (try again after Retry-After), or the analysis ran past its time budget",
          "the server is busy: 8 uploads are already being analysed or waiting; try again in 5 s"),
}
_WRONG_KIND = {"/v1/predict": "this is a video (video/mp4): /v1/predict takes photos; send videos to POST /v1/video",
               "/v1/video": "this is a photo (image/jpeg): /v1/video takes videos; send photos to POST /v1/predict"}


def responses(path: str, problem_model) -> dict:
    """The `responses` argument of an upload endpoint: each error status with its cause and an example."""
    out = {}
    for status, (when, detail) in _ERRORS.items():
        examples = {"example": {"value": {"detail": detail}}}
        if status == 415:
            examples["wrong kind"] = {"value": {"detail": _WRONG_KIND[path]}}
        out[status] = {"model": problem_model, "description": when,
                       "content": {"application/json": {"examples": examples}}}
    return out


def example(body: dict, what: str) -> dict:
    """The `responses` entry for a 200 answer with its example."""
    return {200: {"description": what, "content": {"application/json": {"example": body}}}}
