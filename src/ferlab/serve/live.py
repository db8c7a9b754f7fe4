"""Live mode: `/v1/live`, a WebSocket on which the web page sends webcam frames and gets each one's faces back.

Why a WebSocket. Live mode used to POST a frame to /v1/predict every 400 ms: a new request each time, its body
parsed as multipart, queued with the uploads, answered in the upload worker (where a video can hold it for two
minutes). One connection that carries frames both ways costs a few bytes of framing per frame instead.

The conversation. The server accepts the connection, then says {"type": "ready", "max_side": ..., ...} once its
live worker is up (loading the model takes seconds the first time). Each binary message from the page is one
frame, an encoded picture (JPEG from the page; PNG, WebP, ... are taken too) that the page has scaled down to
`max_side` pixels on its longer side: what the detector needs, and a few KB instead of a 640x480 frame's 30-60.
Each frame is answered, in order, by one text message: {"type": "faces", "frame": n, "width", "height",
"faces", "elapsed_ms"} (n counts the session's frames from 0; boxes are in pixels of the frame as sent), or
{"type": "error", "frame": n, "status": 4xx, "detail"} for a frame that is no picture this server takes, after
which the session goes on. The page sends its next frame when an answer comes back (it keeps one or two in
flight), so a slow server gets fewer frames, never a queue. A session ends with a close code and a reason the
page shows; before closing for a reason of its own, the server sends {"type": "error", "detail"} in full
(a close reason holds 123 bytes).

Untrusted frames are checked in the order that keeps the server cheap to attack, as uploads are (`serve.app`):
- Host and Origin, before the handshake is answered (`SameOrigin`): another site's page gets a 403 and no
  connection. Browsers always send Origin on a WebSocket handshake, so a page elsewhere cannot drive this one.
- The number of sessions: past `max_sessions`, the connection is accepted and closed at once with 1013 (try
  again later) and the reason, which a refused handshake could not carry to the page.
- Message size: `ferlab serve`'s uvicorn stops reading a message past the limit and closes with 1009; the
  session checks the size again (1009 with the reason) for any other server.
- The picture's header (format, pixel count, JPEG scans) before a pixel is decoded (`analysis.decode_image`),
  then decoding: a bad frame is an error message, not the end of the session.
- A text message closes the session with 1003: frames are binary.
- Rate and time: a session's frames are analysed one at a time, and each no sooner than 1/max_fps after the
  previous one started, so a client that sends without waiting for answers gets that rate and no more of the
  worker (uvicorn reads one message ahead, and no further until the session takes it). A session that sends
  nothing for `idle_s`, or that has lasted `session_s`, is closed with 1000 and says which.

Where the frames are analysed. In `ferlab serve`, each session has a live worker process of its own for its whole
length (`serve.worker`, the same process kind as the uploads'): `max_sessions` of them at most, each started when
a session first needs it and kept for the next. Not the upload worker, for two reasons: a video holds that one
for up to its two-minute budget, and a live frame must be answered in tens of milliseconds; and a Predictor
carries state from one frame of a stream to the next (its face tracks), which photos and other sessions'
frames would break into. The price is one more process holding the model (about 320 MiB, as the upload worker)
while live mode is in use. Each frame has the worker's time budget (`frame_budget_s`): a frame still being
analysed then means a stuck worker, which is killed; the session ends with 1011 and the next one starts a fresh
worker. An app given a predictor object (tests, a library embedding a Predictor) analyses live frames in a
thread, under the lock that its uploads take.
"""
from __future__ import annotations

import itertools
import json
import threading
import time
from dataclasses import dataclass

import anyio
from fastapi import HTTPException, WebSocket
from starlette.websockets import WebSocketDisconnect, WebSocketState

from ..data.images import MAX_JPEG_SCANS
from .analysis import analyse_live_frame

LIVE_SESSIONS = 1          # live sessions at once: one takes over half a core at 25 frames/s (docs/inference.md)


@dataclass(frozen=True)
class LiveLimits:
    """What one live session may send and for how long; the page learns them from the ready message."""
    side: int = 320                 # the longer side the page scales frames to: MTCNN finds faces from 40 px of it
    max_bytes: int = 2**20          # one frame message at most (the page's are 5-15 KB)
    max_pixels: int = 1920 * 1080   # one frame's pixels at most, read from its header before decoding
    max_fps: float = 30.0           # frames analysed per second at most
    idle_s: float = 30.0            # a session with no frame for this long is closed
    session_s: float = 600.0        # a session is closed after this long; the page can start another
    frame_budget_s: float = 5.0     # a live worker still busy on one frame after this is stuck: killed, replaced

    def __post_init__(self):
        for name, value in vars(self).items():
            if not value > 0:
                raise ValueError(f"live limit {name} must be positive, got {value}")


# close codes (RFC 6455 and IANA's registry)
NORMAL, UNSUPPORTED, TOO_BIG, INTERNAL, TRY_AGAIN = 1000, 1003, 1009, 1011, 1013


class LiveSessions:
    """The slots of live sessions: at most `max_sessions` at once, each holding its slot for its whole length.
    With `make_worker` (a function that starts an InferenceWorker), each slot has a live worker process of its
    own, started by `start` when a session first needs it and kept for the next; without it, frames are analysed
    by `predictor` in the calling thread, under `lock`."""

    def __init__(self, max_sessions: int, make_worker=None, predictor=None, lock=None,
                 limits: LiveLimits = LiveLimits()):
        if max_sessions < 1:
            raise ValueError(f"live_sessions must be positive, got {max_sessions}")
        self.max_sessions, self.make_worker, self.limits = max_sessions, make_worker, limits
        self.predictor, self.lock = predictor, lock
        self.workers = [None] * max_sessions   # the live worker processes, started on first use
        self.taken = [False] * max_sessions
        self.ids = itertools.count(1)
        self._guard = threading.Lock()         # open/close run on the event loop, close_all at shutdown

    @property
    def active(self) -> int:
        return sum(self.taken)

    def open(self) -> int | None:
        """A free slot, now taken; None when every slot is."""
        with self._guard:
            for slot, taken in enumerate(self.taken):
                if not taken:
                    self.taken[slot] = True
                    return slot
            return None

    def close(self, slot: int) -> None:
        with self._guard:
            self.taken[slot] = False

    def start(self, slot: int) -> None:
        """The slot's live worker, started if it is not yet (blocking: seconds while the model loads)."""
        if self.make_worker is not None and self.workers[slot] is None:
            self.workers[slot] = self.make_worker()

    def run(self, slot: int, *args) -> dict:
        """`analyse_live_frame(predictor, lock, *args)` in the slot's worker (blocking); its HTTPException as it
        came, or a 503 when the worker died or passed the frame budget."""
        worker = self.workers[slot]
        if worker is None:
            return analyse_live_frame(self.predictor, self.lock, *args)
        return worker.call(analyse_live_frame, *args, budget_s=self.limits.frame_budget_s, what="live frame")

    def close_all(self) -> None:
        for w in self.workers:
            if w is not None:
                w.close()


async def live_session(ws: WebSocket, sessions: LiveSessions, max_pixels: int,
                       max_jpeg_scans: int = MAX_JPEG_SCANS) -> None:
    """Serve one live session on `ws` (its handshake already passed the Host and Origin checks) until the client
    leaves or a limit ends it. See the module's docstring for the conversation and the checks."""
    await ws.accept()
    slot = sessions.open()
    if slot is None:
        n = sessions.max_sessions
        return await _end(ws, TRY_AGAIN, "server busy: try again later",
                          f"the server is busy: it runs {n} live session{'s' if n > 1 else ''} at most (ferlab serve "
                          "--live-sessions), and that many are on; try again later")
    name = f"live-{next(sessions.ids)}"
    try:
        try:
            await anyio.to_thread.run_sync(sessions.start, slot)
        except Exception as e:
            return await _end(ws, INTERNAL, "could not start the live worker", f"could not start the live worker: {e}")
        limits = sessions.limits
        await ws.send_text(json.dumps({"type": "ready", "max_side": limits.side, "max_bytes": limits.max_bytes,
                                       "max_fps": limits.max_fps, "idle_s": limits.idle_s,
                                       "session_s": limits.session_s}))
        await _frames(ws, sessions, slot, name, min(max_pixels, limits.max_pixels), max_jpeg_scans)
    except WebSocketDisconnect:
        pass  # the page left (or uvicorn closed it: an oversized message); nothing to answer
    finally:
        sessions.close(slot)


async def _frames(ws, sessions, slot, name, max_pixels, max_jpeg_scans):
    limits = sessions.limits
    max_bytes, max_fps, idle_s, session_s = limits.max_bytes, limits.max_fps, limits.idle_s, limits.session_s
    start = time.monotonic()
    ends = start + session_s
    index, next_at = 0, start
    while True:
        wait = min(idle_s, ends - time.monotonic())
        message = None
        if wait > 0:
            with anyio.move_on_after(wait):
                message = await ws.receive()
        if message is None:
            if time.monotonic() >= ends:
                return await _end(ws, NORMAL, "live session time is up: start again",
                                  f"a live session lasts {session_s:g} s at most; start live mode again to go on")
            return await _end(ws, NORMAL, "no frame for a while: live session ended",
                              f"no frame came for {idle_s:g} s, so the live session was ended")
        if message["type"] == "websocket.disconnect":
            return
        data = message.get("bytes")
        if data is None:
            return await _end(ws, UNSUPPORTED, "frames must be binary messages",
                              "live frames are binary messages (the JPEG or PNG bytes of each frame); "
                              "text messages are not taken")
        if len(data) > max_bytes:
            return await _end(ws, TOO_BIG, f"frame over the {max_bytes:,} byte limit",
                              f"a live frame of {len(data):,} bytes; the limit is {max_bytes:,} bytes: send frames "
                              "scaled down to the ready message's max_side")
        now = time.monotonic()
        if now < next_at:  # faster than max_fps: wait for the frame's turn
            await anyio.sleep(next_at - now)
            now = time.monotonic()
        next_at = now + 1.0 / max_fps
        t0 = time.perf_counter()
        try:
            out = await anyio.to_thread.run_sync(sessions.run, slot, data, name, index, round(now - start, 3),
                                                 max_pixels, max_jpeg_scans)
        except HTTPException as e:
            if e.status_code >= 500:  # the worker died or was stuck: this session cannot go on
                return await _end(ws, INTERNAL, "the live worker failed: start again", str(e.detail))
            answer = {"type": "error", "frame": index, "status": e.status_code, "detail": e.detail}
        else:
            answer = {"type": "faces", "frame": index, **out,
                      "elapsed_ms": round((time.perf_counter() - t0) * 1000, 1)}
        await ws.send_text(json.dumps(answer))
        index += 1


async def _end(ws: WebSocket, code: int, reason: str, detail: str) -> None:
    """Close `ws` with `code` and a short `reason`, after an error message with the whole `detail`."""
    if ws.application_state is not WebSocketState.CONNECTED or ws.client_state is not WebSocketState.CONNECTED:
        return
    try:
        await ws.send_text(json.dumps({"type": "error", "code": code, "detail": detail}))
        await ws.close(code, reason.encode()[:123].decode(errors="ignore"))
    except (WebSocketDisconnect, RuntimeError, OSError):
        pass  # the page left meanwhile
