"""REST API and web page: `POST /v1/predict` takes an uploaded photo and returns every face's emotion;
`POST /v1/video` takes a video and returns its faces frame by frame, tracked, with the emotion timeline.

Untrusted uploads are checked in the order that keeps the server cheap to attack: request size (before
the body is parsed), declared type, image header (format and pixel count, before any pixel is decoded),
then decoding. Each failure is a 4xx with a JSON `detail` that says what was expected and what came.

Videos follow the same order. OpenCV (FFmpeg underneath) needs a path, so the upload is copied into a temp
folder of its own (where the annotated video is written too, with annotate=true) that is removed whatever
happens; before FFmpeg sees it, its first bytes must name a plain container (MP4/MOV, WebM/Matroska or AVI),
because FFmpeg also reads playlists and other formats that point at further files. A video sent to the photo
endpoint, or a photo to the video one, is a 415 that names the right endpoint.
The frame size is read from the container and checked against the pixel limit before a frame is decoded,
and at most `max_video_frames` frames are analysed (a longer video is sampled more sparsely, and the answer
says so). A video holds the inference lock for its whole analysis, like a batch of photos would.

Where the work runs. `ferlab serve` (create_app without a predictor) decodes and analyses every upload in a
separate inference process (`serve.worker`): decoding a 40 MP image and running the detector on it hold the
GIL for 20-40 ms at a time, and in a thread of the server that stalled the event loop, `/health` included. The
server process keeps only the web stack (no torch) and sends each upload's compressed bytes, or a video's temp
file path, to the worker; a worker that dies costs its request a 503 and is replaced on the next one. An
app given a predictor object (tests, a library embedding a Predictor) runs the same functions, `analyse_photo`
and `analyse_video` (`serve.analysis`), in a thread instead. Either way at most `workers` uploads are decoded
at a time.

Live mode (the web page's webcam, frame after frame) is a WebSocket, `/v1/live`, with worker processes of its own:
`serve.live` says why and how its frames are checked.
"""
from __future__ import annotations

import base64
import contextlib
import functools
import os
import queue
import shutil
import tempfile
import threading
import time
from pathlib import Path
from typing import Annotated

import anyio
from fastapi import FastAPI, Form, HTTPException, Query, Request, UploadFile, WebSocket
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, JSONResponse, Response
from fastapi.staticfiles import StaticFiles
from pydantic import BaseModel, Field
from starlette.datastructures import Headers

from .._version import __version__
from ..data.images import MAX_JPEG_SCANS
from . import api_docs
from .analysis import (MAX_PIXELS, VIDEO_CONTAINERS, Face, ShareRow, Track, VideoFrame, analyse_photo, analyse_video,
                       describe_predictor, map_big_buffers, pixel_limit, sniff_video)
from .live import LIVE_SESSIONS, LiveLimits, LiveSessions, live_session
from .worker import InferenceWorker

STATIC = Path(__file__).parent / "static"
MAX_BYTES = 10 * 2**20          # upload limit (10 MiB)
WORKERS = 1                     # uploads decoded and analysed at once (inference is one at a time anyway)
# multipart framing (boundaries, part headers) on top of the file itself
MULTIPART_SLACK = 64 * 2**10
MAX_VIDEO_BYTES = 50 * 2**20    # video upload limit (50 MiB)
MAX_VIDEO_FRAMES = 150          # frames analysed per video at most; a longer one is sampled more sparsely
PHOTO_BUDGET_S = 20.0           # wall-clock seconds the inference worker may spend on one photo ...
VIDEO_BUDGET_S = 120.0          # ... and on one video, before it is killed and replaced
MAX_ACTIVE = 8                  # uploads being analysed or waiting their turn; more get a 503 with Retry-After
RETRY_AFTER_S = 5


class PhotoUpload(BaseModel):
    """The form of a photo upload (multipart/form-data)."""
    file: UploadFile = Field(description="the photo: JPEG, PNG, WebP, BMP, GIF or TIFF")


class VideoUpload(BaseModel):
    """The form of a video upload (multipart/form-data)."""
    file: UploadFile = Field(description=f"the video: {VIDEO_CONTAINERS}, with a common codec (H.264, VP8/9, MPEG-4)")


class Prediction(BaseModel):
    """Every face found in a photo, and its expression."""
    filename: str | None = Field(description="the uploaded file's name")
    width: int = Field(description="the photo's width in pixels, upright (after its EXIF rotation)")
    height: int = Field(description="the photo's height in pixels, upright")
    faces: list[Face] = Field(description="the faces found, left to right")
    message: str | None = Field(None, description="set when no face was found")
    model: str = Field(description="the model that answered")
    classes: list[str] = Field(description="the class names, in the order of every `probs`")
    elapsed_ms: float = Field(description="time the server spent on this request, in milliseconds")


class VideoPrediction(BaseModel):
    """Every face in a video's analysed frames, tracked, with the emotion share over time."""
    filename: str | None = Field(description="the uploaded file's name")
    width: int = Field(description="the frames' width in pixels")
    height: int = Field(description="the frames' height in pixels")
    fps: float | None = Field(description="frames per second of the video, as its container states")
    frames_total: int | None = Field(description="frames in the video, as its container states (None if unstated)")
    every: int = Field(description="every n-th frame was analysed")
    frames_analysed: int = Field(description="frames analysed (the entries of `frames`)")
    max_frames: int = Field(description="the server's limit on frames analysed per video")
    note: str | None = Field(None, description="set when the server sampled more sparsely than asked, or stopped early")
    frames: list[VideoFrame] = Field(description="each analysed frame and its faces")
    summary: list[ShareRow] = Field(description="the emotion share over time (the rows of `emotions_csv`)")
    emotions_csv: str = Field(description="the emotion share over time as CSV (time_s, frame, faces, one column "
                                          "per class), as `ferlab predict --save` writes it")
    tracks: list[Track] = Field(description="each face followed across the frames, with its dominant expression")
    timeline_png: str = Field(description="the emotion timeline plot as a data:image/png;base64 URL")
    annotated_video: str | None = Field(None, description="with annotate=true: the analysed frames with each "
                                        "face's box and label drawn, as a data:video/mp4;base64 URL (H.264)")
    model: str = Field(description="the model that answered")
    classes: list[str] = Field(description="the class names, in the order of every `probs` and CSV column")
    elapsed_ms: float = Field(description="time the server spent on this request, in milliseconds")


class Health(BaseModel):
    """What this server runs, and its limits."""
    status: str = Field(description="'ok' while the server answers")
    model: str = Field(description="the model's name")
    detector: str = Field(description="the face detector's name")
    classes: list[str] = Field(description="the class names, in the order of every `probs`")
    max_bytes: int = Field(description="largest photo upload, in bytes")
    max_pixels: int = Field(description="most pixels in a photo or a video frame")
    max_video_bytes: int = Field(description="largest video upload, in bytes")
    max_video_frames: int = Field(description="most frames analysed per video")
    version: str = Field(description="ferlab's version")


class Problem(BaseModel):
    """An error: what was expected and what came."""
    detail: str = Field(description="what was wrong, in words")


def create_app(predictor=None, *, model: str = "default", detector: str = "mtcnn", device: str = "cpu",
               max_bytes: int = MAX_BYTES, max_pixels: int = MAX_PIXELS, workers: int = WORKERS,
               max_video_bytes: int = MAX_VIDEO_BYTES, max_video_frames: int = MAX_VIDEO_FRAMES,
               threads: int | None = None, worker_cpus: set[int] | None = None,
               photo_budget_s: float = PHOTO_BUDGET_S, video_budget_s: float = VIDEO_BUDGET_S,
               max_active: int = MAX_ACTIVE, max_jpeg_scans: int = MAX_JPEG_SCANS,
               allow_hosts: tuple[str, ...] = (), allow_origins: tuple[str, ...] = (),
               live_sessions: int = LIVE_SESSIONS, live: LiveLimits = LiveLimits()) -> FastAPI:
    """The FastAPI app. Without `predictor`, `workers` inference processes are started (each has loaded its
    Predictor, built from `model`/`detector`/`device` with `threads` CPU threads on the cores `worker_cpus`,
    before this returns) and
    stopped when the app's lifespan ends (`app.state.workers` holds them). With `predictor` (anything with
    `.predict(rgb_uint8)` and `.classes`; `.stream` too for videos) uploads are analysed in threads of this
    process instead, one inference at a time. `max_bytes` and `max_pixels` bound each photo upload (the pixel
    limit bounds video frames too), `max_video_bytes` and `max_video_frames` each video, and `workers` the
    uploads decoded and analysed at once (the rest wait, holding only their compressed bytes), so the pixel
    memory in use is at most about workers x max_pixels x 7 bytes whatever the number of clients.

    Time and queue: an inference worker that spends more than `photo_budget_s` on a photo or `video_budget_s` on
    a video is killed (its client gets a 503 saying so) and replaced by a fresh one; a thread cannot be killed,
    so an app given a predictor object has no budget. At most `max_active` uploads are in the server at once,
    being read, waiting or analysed; the next gets a 503 with Retry-After before its body is read, so memory
    and temp disk stay bounded whatever the number of clients. An upload whose client left while it waited
    is dropped unanalysed. JPEGs with more than `max_jpeg_scans` scans are refused before decoding.

    Cross-site requests: the Host header must be an IP address, localhost or one of `allow_hosts` (a DNS
    rebinding page has a name of its own), and a request that carries an Origin must come from this server's
    own page (the Origin names the Host it was sent to) or from one of `allow_origins`: any other web page
    the user visits could otherwise drive this server.

    Live mode: at most `live_sessions` WebSocket sessions on `/v1/live` at once, each within `live`'s limits;
    without `predictor`, each has a live worker process (started at its first session, then kept), see
    `serve.live`."""
    limits = dict(max_bytes=max_bytes, max_pixels=max_pixels, workers=workers, max_video_bytes=max_video_bytes,
                  max_video_frames=max_video_frames, photo_budget_s=photo_budget_s, video_budget_s=video_budget_s,
                  max_active=max_active, max_jpeg_scans=max_jpeg_scans, live_sessions=live_sessions)
    for name, value in limits.items():
        if value < 1:
            raise ValueError(f"{name} must be positive, got {value}")
    if threads is not None and threads < 1:
        raise ValueError(f"threads must be positive, got {threads}")
    max_pixels = pixel_limit(max_pixels)
    map_big_buffers()
    limiter = anyio.CapacityLimiter(workers)  # uploads decoded + analysed at once; the event loop stays free
    pool: list[InferenceWorker] = []
    if predictor is None:
        try:
            for _ in range(workers):
                pool.append(InferenceWorker(model, detector, device, threads, cpus=worker_cpus))
        except BaseException:
            for w in pool:
                w.close()
            raise
        idle = queue.SimpleQueue()  # at most `workers` threads ask (the limiter), so one is always free
        for w in pool:
            idle.put(w)
        info = pool[0].info
        classes, model_name, detector_name = info["classes"], info["model"], info["detector"]

        def run(fn, *args, budget_s=None, what="upload"):
            w = idle.get()
            try:
                return w.call(fn, *args, budget_s=budget_s, what=what)
            finally:
                idle.put(w)

        sessions = LiveSessions(live_sessions, functools.partial(InferenceWorker, model, detector, device, threads,
                                                                 cpus=worker_cpus), limits=live)
    else:
        classes = [str(c) for c in predictor.classes]
        model_name, detector_name = describe_predictor(predictor, model, detector)
        # one inference at a time: torch already uses every core, and the detector is not known to be thread-safe
        lock = threading.Lock()

        def run(fn, *args, budget_s=None, what="upload"):  # no budget: a thread cannot be stopped
            return fn(predictor, lock, *args)

        sessions = LiveSessions(live_sessions, predictor=predictor, lock=lock, limits=live)

    async def in_turn(request: Request, work, *args):
        """`work(*args)` in a thread once one of the `workers` slots is free; dropped if the client left."""
        async with limiter:
            if await request.is_disconnected():
                raise HTTPException(499, "the client closed the connection while its upload waited")
            return await anyio.to_thread.run_sync(work, *args)

    temp_files: set[str] = set()  # videos' temp folders, removed at shutdown if their request could not

    @contextlib.asynccontextmanager
    async def lifespan(app):
        try:
            yield
        finally:
            for w in pool:
                w.close()
            sessions.close_all()
            for folder in list(temp_files):
                shutil.rmtree(folder, ignore_errors=True)

    app = FastAPI(title="ferlab", version=__version__, docs_url=None, redoc_url=None, lifespan=lifespan,
                  description="Facial expression recognition: upload a photo or a video, get each face's emotion. "
                              "The web page is at `/`; this reference is at `/docs` and `/redoc`, the schema at "
                              "`/openapi.json`. The page's live mode sends webcam frames over a WebSocket, "
                              "`/v1/live`, which OpenAPI does not describe: see docs/inference.md.")
    app.state.workers = pool
    app.state.live = sessions
    app.add_middleware(UploadLimit, limits={"/v1/predict": max_bytes + MULTIPART_SLACK,
                                            "/v1/video": max_video_bytes + MULTIPART_SLACK}, max_active=max_active)
    app.add_middleware(SameOrigin, hosts=allow_hosts, origins=allow_origins)  # outermost: checked first

    @app.exception_handler(RequestValidationError)
    async def validation_error(request: Request, exc: RequestValidationError):
        parts = [f"{'.'.join(str(p) for p in e.get('loc', ()))}: {e.get('msg', 'invalid')}" for e in exc.errors()]
        return JSONResponse(status_code=422, content={
            "detail": "expected multipart/form-data with the upload in field 'file'; " + "; ".join(parts)})

    @app.get("/health", response_model=Health, summary="Liveness and model information", operation_id="health",
             description=api_docs.HEALTH, responses=api_docs.example(api_docs.HEALTH_EXAMPLE, "the server is up"))
    async def health() -> Health:  # on the event loop: never queued behind uploads in the thread pool
        return Health(status="ok", model=model_name, detector=detector_name, classes=classes, max_bytes=max_bytes,
                      max_pixels=max_pixels, max_video_bytes=max_video_bytes, max_video_frames=max_video_frames,
                      version=__version__)

    @app.post("/v1/predict", response_model=Prediction, summary="Emotion of every face in a photo",
              operation_id="predict", description=api_docs.PREDICT,
              responses={**api_docs.example(api_docs.PREDICT_EXAMPLE, "the faces found and their expressions"),
                         **api_docs.responses("/v1/predict", Problem)})
    async def predict(request: Request, form: Annotated[PhotoUpload, Form(media_type="multipart/form-data")],
                      explain: bool = Query(False, description="add each face's class activation map (HiResCAM "
                                                                "for the reported label) as `heatmap`")):
        t0 = time.perf_counter()
        file = form.file
        _check_part_type(file.content_type)
        data = await file.read(max_bytes + 1)
        if len(data) > max_bytes:
            raise HTTPException(413, f"file is larger than the {_mib(max_bytes)} limit")
        if not data:
            raise HTTPException(400, "the uploaded file is empty; expected an image")
        if sniff_video(data[:64]):  # sent as octet-stream or as an image: its first bytes say video
            raise HTTPException(415, _wrong_kind(None, video=True))

        (height, width), faces = await in_turn(request, functools.partial(
            run, analyse_photo, data, explain, max_pixels, max_jpeg_scans, budget_s=photo_budget_s, what="photo"))
        return Prediction(
            filename=file.filename, width=width, height=height, faces=faces,
            message=None if faces else "no face found; try a brighter, frontal photo with the face larger in frame",
            model=model_name, classes=classes, elapsed_ms=round((time.perf_counter() - t0) * 1000, 1))

    @app.post("/v1/video", response_model=VideoPrediction, operation_id="video",
              summary="Emotion of every face in a video, frame by frame, with the emotion timeline",
              description=api_docs.VIDEO,
              responses={**api_docs.example(api_docs.VIDEO_EXAMPLE, "the analysed frames, tracks and emotion share"),
                         **api_docs.responses("/v1/video", Problem)})
    async def video(request: Request, form: Annotated[VideoUpload, Form(media_type="multipart/form-data")],
                    every: int = Query(1, ge=1, le=100_000, description="analyse every n-th frame (the server may "
                                       "choose a larger n to stay within its frame limit)"),
                    annotate: bool = Query(False, description="also answer the analysed frames with each face's box "
                                           "and label drawn, as an H.264 MP4 in `annotated_video`")):
        t0 = time.perf_counter()
        file = form.file
        _check_part_type(file.content_type, video=True)

        def work():
            with upload_copy(file.file, max_video_bytes, temp_files) as path:
                drawn = str(Path(path).with_name("annotated.mp4")) if annotate else None  # in the upload's own folder
                out = run(analyse_video, path, file.filename, every, max_video_frames, max_pixels, drawn,
                          budget_s=video_budget_s, what="video")
                if drawn is not None:
                    out["annotated_video"] = "data:video/mp4;base64," + base64.b64encode(Path(drawn).read_bytes()).decode()
            answer = VideoPrediction(filename=file.filename, **out, model=model_name, classes=classes,
                                     elapsed_ms=round((time.perf_counter() - t0) * 1000, 1))
            # serialised here, in the worker thread: an answer with a video inside is megabytes of JSON, which
            # would hold the event loop (and /health) if FastAPI encoded it there
            return Response(answer.model_dump_json(), media_type="application/json")

        return await in_turn(request, work)

    @app.websocket("/v1/live")
    async def live_frames(ws: WebSocket):
        await live_session(ws, sessions, max_pixels, max_jpeg_scans)

    @app.get("/", include_in_schema=False)
    def index():
        return FileResponse(STATIC / "index.html", headers={
            "Content-Security-Policy": "default-src 'self'; img-src 'self' blob: data:; media-src 'self' blob:; "
                                       "frame-ancestors 'none'", "X-Frame-Options": "DENY"})

    app.mount("/static", StaticFiles(directory=STATIC), name="static")
    _offline_docs(app)
    return app


def _offline_docs(app: FastAPI) -> None:
    """/docs (Swagger UI) and /redoc from the assets inside the installed fastapi-offline package, not a CDN:
    the API's documentation works on a machine with no internet, and tells no other host it was read. Redoc's
    script shows its maker's logo from their CDN: it is served here without that address (its sidebar shows the
    attribution's text only), and /redoc's Content-Security-Policy lets the page load nothing from elsewhere."""
    from fastapi.openapi.docs import get_redoc_html, get_swagger_ui_html
    assets = DOCS_ASSETS()
    missing = [f for f in ("swagger-ui-bundle.js", "swagger-ui.css", "redoc.standalone.js")
               if assets is None or not (assets / f).is_file()]
    if missing:
        @app.get("/docs", include_in_schema=False)
        @app.get("/redoc", include_in_schema=False)
        def no_docs():
            return JSONResponse(status_code=503, content={
                "detail": f"the API docs need the fastapi-offline package's assets (missing: {', '.join(missing)}); "
                          "pip install fastapi-offline, or read /openapi.json"})
        return

    @app.get("/docs-assets/redoc.standalone.js", include_in_schema=False)  # before the folder's mount: it wins
    def redoc_js():
        return Response(_redoc_script(assets / "redoc.standalone.js"), media_type="text/javascript")

    app.mount("/docs-assets", StaticFiles(directory=assets), name="docs-assets")

    @app.get("/docs", include_in_schema=False)
    def swagger():
        return get_swagger_ui_html(openapi_url=app.openapi_url, title=f"{app.title} API",
                                   swagger_js_url="/docs-assets/swagger-ui-bundle.js",
                                   swagger_css_url="/docs-assets/swagger-ui.css",
                                   swagger_favicon_url="/static/favicon.svg")

    @app.get("/redoc", include_in_schema=False)
    def redoc():
        page = get_redoc_html(openapi_url=app.openapi_url, title=f"{app.title} API",
                              redoc_js_url="/docs-assets/redoc.standalone.js",
                              redoc_favicon_url="/static/favicon.svg", with_google_fonts=False)
        page.headers["Content-Security-Policy"] = REDOC_CSP
        return page


# redoc styles itself with inline <style> elements and renders in a worker made from a blob: URL; nothing else
# comes from anywhere but this server
REDOC_CSP = ("default-src 'self'; img-src 'self' data:; style-src 'self' 'unsafe-inline'; worker-src 'self' blob:; "
             "frame-ancestors 'none'")
REDOC_LOGO = b"https://cdn.redoc.ly/redoc/logo-mini.svg"  # the one outside address redoc's script loads


@functools.lru_cache(maxsize=1)
def _redoc_script(path: Path) -> bytes:
    """redoc's script with its logo's address emptied: the logo's <img> then fails without a request, and redoc
    hides it (its onError handler)."""
    return path.read_bytes().replace(REDOC_LOGO, b"")


def _fastapi_offline_assets() -> Path | None:
    """The static folder of the installed fastapi-offline package, found without importing it."""
    import importlib.util
    spec = importlib.util.find_spec("fastapi_offline")
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(list(spec.submodule_search_locations)[0]) / "static"


DOCS_ASSETS = _fastapi_offline_assets  # a function, so tests can point it elsewhere


@contextlib.contextmanager
def upload_copy(src, limit: int, registry: set[str] | None = None):
    """`with upload_copy(fileobj, limit) as path`: the upload copied to a file in a private temp folder (OpenCV
    reads paths), once its first bytes were recognised as a video container; what is written next to it there
    (the annotated video) goes with it: the folder is removed on leaving, whatever happened. The folder is in
    `registry` meanwhile, for a server that stops with the video still in flight."""
    head = src.read(64)
    if not head:
        raise HTTPException(400, "the uploaded file is empty; expected a video")
    suffix = sniff_video(head)
    if suffix is None:
        if _looks_like_image(head):
            raise HTTPException(415, _wrong_kind(None, video=False))
        raise HTTPException(415, f"not a supported video: expected {VIDEO_CONTAINERS} (file starts with {head[:12]!r})")
    folder = tempfile.mkdtemp(prefix="ferlab-video-")
    registry = set() if registry is None else registry
    registry.add(folder)
    try:
        path = os.path.join(folder, "upload" + suffix)
        with open(path, "wb") as out:
            out.write(head)
            size = len(head)
            while chunk := src.read(2**20):
                size += len(chunk)
                if size > limit:
                    raise HTTPException(413, f"file is larger than the {_mib(limit)} limit")
                out.write(chunk)
        yield path
    finally:
        # removed before it leaves the registry: a server stopping meanwhile (its lifespan removes what the registry
        # holds, then the process ends and this thread with it) finds the folder in one place or the other
        shutil.rmtree(folder, ignore_errors=True)  # a stopping server may have removed it already
        registry.discard(folder)


class UploadLimit:
    """ASGI middleware: refuse a POST to one of the paths in `limits` from its headers alone (wrong type, empty,
    declared too large), and stop reading a body sent without Content-Length once it passes that path's limit."""

    def __init__(self, app, limits: dict[str, int], max_active: int = MAX_ACTIVE):
        self.app, self.limits, self.max_active = app, limits, max_active
        self.active = 0  # uploads in the server: being received, waiting or analysed (one event loop: no lock)

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http" or scope["method"] != "POST" or scope["path"] not in self.limits:
            return await self.app(scope, receive, send)
        max_body = self.limits[scope["path"]]
        problem = _check_request(Request(scope), max_body)
        if problem is None and self.active >= self.max_active:
            problem = JSONResponse(status_code=503, headers={"Retry-After": str(RETRY_AFTER_S)}, content={
                "detail": f"the server is busy: {self.max_active} uploads are already being analysed or waiting; "
                          f"try again in {RETRY_AFTER_S} s"})
        if problem is not None:
            return await refuse_unread(problem, scope, receive, send)
        self.active += 1
        try:
            await self._limited(scope, receive, send, max_body)
        finally:
            self.active -= 1

    async def _limited(self, scope, receive, send, max_body):
        seen = 0

        async def counted_receive():
            nonlocal seen
            message = await receive()
            seen += len(message.get("body", b""))
            if seen > max_body:
                # raised inside body parsing, so FastAPI's exception handling turns it into the 413
                limit = _mib(max_body - MULTIPART_SLACK)
                raise HTTPException(413, f"request body passed the upload limit of {limit}")
            return message

        await self.app(scope, counted_receive, send)


class SameOrigin:
    """ASGI middleware: refuse (403) a request whose Host is a name other than localhost and `hosts`, or whose
    Origin is neither this server's own (scheme://Host) nor one of `origins`. See create_app."""

    def __init__(self, app, hosts=(), origins=()):
        self.app = app
        self.hosts = {"localhost", *(h.lower() for h in hosts)}
        self.origins = {o.rstrip("/").lower() for o in origins}

    async def __call__(self, scope, receive, send):
        if scope["type"] not in ("http", "websocket"):
            return await self.app(scope, receive, send)
        headers = Headers(scope=scope)  # a Request would take HTTP scopes only; a WebSocket's handshake is checked too
        host = headers.get("host", "").lower()
        origin = headers.get("origin")
        problem = None
        if not _host_allowed(host, self.hosts):
            problem = (f"Host {host!r} is not this server's name: only IP addresses, localhost and the names "
                       "given to ferlab serve --allow-host are served")
        elif origin is not None and origin.rstrip("/").lower() not in {f"http://{host}", f"https://{host}",
                                                                       *self.origins}:
            problem = (f"a page at {origin!r} may not use this server (cross-site request); allow it with "
                       "ferlab serve --allow-origin")
        if problem is None:
            return await self.app(scope, receive, send)
        await refuse_unread(JSONResponse(status_code=403, content={"detail": problem}), scope, receive, send)


async def refuse_unread(response: JSONResponse, scope, receive, send) -> None:
    """Answer a request whose body was not read, and close its connection: kept alive, the server would go
    on receiving (and dropping) the rest of a body of up to the upload limit, and a crowd of clients refused
    that way would keep its event loop busy, /health included (measured: 150 clients re-sending 10 MiB
    uploads that a full queue refuses, /health p99 311 ms before the close)."""
    response.headers["Connection"] = "close"
    await response(scope, receive, send)


def _host_allowed(host: str, names: set[str]) -> bool:
    """A Host header's name (port dropped) is an IP address literal or one of `names`."""
    import ipaddress
    name = host[1:host.index("]")] if host.startswith("[") and "]" in host else host.rsplit(":", 1)[0]
    if name in names:
        return True
    try:
        ipaddress.ip_address(name)
        return True
    except ValueError:
        return False


def _check_request(request: Request, limit: int) -> JSONResponse | None:
    """Refuse a predict request from its headers alone: wrong type, empty, or over the size limit."""
    ctype = request.headers.get("content-type", "")
    if not ctype.lower().startswith("multipart/form-data"):
        return JSONResponse(status_code=415, content={
            "detail": "expected multipart/form-data with the upload in field 'file', "
                      f"got {ctype or 'no content type'!r}"})
    length = request.headers.get("content-length")
    if length is not None:
        if not length.isdigit():
            return JSONResponse(status_code=400, content={"detail": f"bad Content-Length {length!r}"})
        if int(length) == 0:
            return JSONResponse(status_code=400, content={
                "detail": "empty request body; expected multipart/form-data with the upload in field 'file'"})
        if int(length) > limit:
            return JSONResponse(status_code=413, content={
                "detail": f"request body is {int(length):,} bytes; "
                          f"the upload limit is {_mib(limit - MULTIPART_SLACK)}"})
    return None


def _check_part_type(content_type: str | None, video: bool = False) -> None:
    # browsers send image/* or video/*; curl and scripts often send octet-stream for unknown extensions
    kind, examples = ("video", "video/mp4, video/webm, ...") if video else ("image", "image/jpeg, image/png, ...")
    other = "image" if video else "video"
    if content_type and content_type.startswith(f"{other}/"):
        raise HTTPException(415, _wrong_kind(content_type, video=not video))
    if content_type and not content_type.startswith((f"{kind}/", "application/octet-stream")):
        raise HTTPException(415, f"field 'file' must be {'a video' if video else 'an image'} ({examples}), "
                                 f"got {content_type!r}")


def _wrong_kind(content_type: str | None, video: bool) -> str:
    """The 415 detail for a video sent to /v1/predict (`video`) or a photo sent to /v1/video."""
    said = f" ({content_type})" if content_type else ""
    if video:
        return f"this is a video{said}: /v1/predict takes photos; send videos to POST /v1/video"
    return f"this is a photo{said}: /v1/video takes videos; send photos to POST /v1/predict"


def _looks_like_image(head: bytes) -> bool:
    """The first bytes of a JPEG, PNG, GIF, WebP, BMP or TIFF file."""
    return head.startswith((b"\xff\xd8\xff", b"\x89PNG", b"GIF8", b"BM", b"II*\x00", b"MM\x00*")) or \
        (head[:4] == b"RIFF" and head[8:12] == b"WEBP")


def _mib(n: int) -> str:
    return f"{n / 2**20:g} MiB"
