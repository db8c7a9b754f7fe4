"""`ferlab serve`'s inference worker process: the same answers as the in-thread path, a killed worker costs one
503 and is replaced, and the server leaves no process behind when it stops.

The model is test_serve's small real checkpoint; the photo is skimage's astronaut, the video test_serve's.
"""
from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest
from fastapi.testclient import TestClient
from test_serve import (_decoded_video, astronaut, astronaut_video, checkpoint, encode, photo, scan_bomb,  # noqa: F401
                        upload, upload_video)

from ferlab.inference.predictor import Predictor
from ferlab.serve.app import create_app

LOCAL = "http://127.0.0.1"  # the Host a browser on this machine sends; other names are refused

LIMITS = dict(max_bytes=200_000, max_pixels=4_000_000)


@pytest.fixture(scope="module")
def worker_app(checkpoint):  # noqa: F811
    """The app as `ferlab serve` builds it: no predictor given, so one inference process (one thread)."""
    app = create_app(model=str(checkpoint), detector="haar", threads=1, **LIMITS)
    with TestClient(app, base_url=LOCAL) as client:
        yield app, client
    assert [w.process for w in app.state.workers] == [None]  # the lifespan's end stopped it
    assert all(w is None or w.process is None for w in app.state.live.workers)  # and the live worker


@pytest.fixture(scope="module")
def thread_client(checkpoint):  # noqa: F811
    return TestClient(create_app(Predictor(str(checkpoint), detector="haar"), **LIMITS), base_url=LOCAL)


def test_the_worker_answers_what_the_thread_answers(worker_app, thread_client, photo, astronaut_video,  # noqa: F811
                                                     tmp_path):
    app, client = worker_app
    [worker] = app.state.workers
    assert worker.pid != os.getpid() and worker.process.is_alive() and worker.info["threads"] == 1
    assert client.get("/health").json()["model"] == thread_client.get("/health").json()["model"] == "vgg_s"
    for params in ({}, {"explain": "true"}):
        got = client.post("/v1/predict", params=params, files={"file": ("a.jpg", photo, "image/jpeg")})
        want = thread_client.post("/v1/predict", params=params, files={"file": ("a.jpg", photo, "image/jpeg")})
        assert got.status_code == want.status_code == 200, (got.text, want.text)
        got, want = got.json(), want.json()
        assert len(got["faces"]) == 1 and (got["width"], got["height"]) == (want["width"], want["height"])
        for g, w in zip(got["faces"], want["faces"], strict=True):
            assert g["box"] == w["box"] and g["label"] == w["label"] and g["heatmap"] == w["heatmap"]
            assert g["probs"] == pytest.approx(w["probs"], abs=1e-6)
        assert (got["faces"][0]["heatmap"] is not None) == bool(params)

    from PIL import Image
    big_png = encode(Image.new("L", (2500, 2000)), "PNG")  # 5 MP, a few KB: over the 4 MP limit
    for data in (b"hello, this is not a photo", photo[: len(photo) // 2], big_png, b""):
        got, want = upload(client, data), upload(thread_client, data)
        assert got.status_code == want.status_code and 400 <= got.status_code < 500, (got.text, want.text)
        assert got.json() == want.json()

    mp4 = astronaut_video.read_bytes()
    got = upload_video(client, mp4, every=2, annotate="true").json()
    want = upload_video(thread_client, mp4, every=2, annotate="true").json()
    assert [f["frame"] for f in got["frames"]] == [f["frame"] for f in want["frames"]] == [0, 2, 4, 6]
    assert got["tracks"] == want["tracks"] and got["summary"] == want["summary"]
    assert got["emotions_csv"] == want["emotions_csv"]
    drawn, _ = _decoded_video(got["annotated_video"], tmp_path)  # drawn in the worker, read by the server
    assert len(drawn) == 4 and drawn[0].shape == (256, 256, 3)
    bad = upload_video(client, mp4[:24] + bytes(3000))
    assert bad.json() == upload_video(thread_client, mp4[:24] + bytes(3000)).json() and bad.status_code == 415


def test_a_killed_worker_costs_one_503_and_is_replaced(worker_app, photo):  # noqa: F811
    app, client = worker_app
    [worker] = app.state.workers
    assert upload(client, photo).status_code == 200

    # killed between requests: the next request is served by a fresh worker
    old = worker.pid
    os.kill(old, signal.SIGKILL)
    worker.process.join(10)
    assert upload(client, photo).status_code == 200 and worker.pid not in (None, old)

    # killed while analysing: stopped first, so the request is surely in the worker when the kill comes
    old = worker.pid
    os.kill(old, signal.SIGSTOP)
    answer = {}
    t = threading.Thread(target=lambda: answer.update(r=upload(client, photo)))
    t.start()
    end = time.time() + 30
    while not worker.lock.locked() and time.time() < end:
        time.sleep(0.01)
    time.sleep(0.3)  # from taking the lock to waiting on the worker: microseconds
    assert client.get("/health").status_code == 200  # the server answers while its worker hangs
    os.kill(old, signal.SIGKILL)
    t.join(30)
    r = answer["r"]
    assert r.status_code == 503, r.text
    assert "worker process died" in r.json()["detail"] and "SIGKILL" in r.json()["detail"], r.json()
    assert upload(client, photo).status_code == 200 and worker.pid not in (None, old)


def test_a_photo_over_its_time_budget_is_a_503_and_its_worker_is_replaced(checkpoint, photo):  # noqa: F811
    """A JPEG whose 1,000 scans take seconds to decode (allowed in here, so that it reaches the decoder) holds
    the worker past its 1 s budget: the worker is killed, the client gets a 503 that says why within about
    the budget, and the next upload is served by a fresh worker."""
    app = create_app(model=str(checkpoint), detector="none", threads=1, photo_budget_s=1.0,
                     max_jpeg_scans=10**6, max_pixels=10_000_000)
    with TestClient(app, base_url=LOCAL) as client:
        [worker] = app.state.workers
        old = worker.pid
        t0 = time.monotonic()
        r = upload(client, scan_bomb(3000, 1000))
        took = time.monotonic() - t0
        assert r.status_code == 503 and "budget of 1 s" in r.json()["detail"], r.text
        assert took < 8, took  # the budget plus stopping the worker, not the 5 s decode
        assert not _alive(old)
        assert upload(client, photo).status_code == 200 and worker.pid not in (None, old)


LIVE = "ws://127.0.0.1/v1/live"


def _live_answer(client, frame: bytes) -> dict:
    with client.websocket_connect(LIVE) as ws:
        assert ws.receive_json()["type"] == "ready"
        ws.send_bytes(frame)
        return ws.receive_json()


def test_live_frames_run_in_a_live_worker_of_their_own(worker_app, thread_client, photo):  # noqa: F811
    """Live frames are analysed in a process of their own, not the upload worker's (a video holds that one for
    minutes), started by the first session and kept for the next; it answers what the in-thread path answers."""
    app, client = worker_app
    [upload_worker] = app.state.workers
    assert app.state.live.workers == [None]  # not started before a session needs it
    got, want = _live_answer(client, photo), _live_answer(thread_client, photo)
    [live] = app.state.live.workers
    assert live.pid not in (None, os.getpid(), upload_worker.pid) and live.info["threads"] == 1
    assert got["type"] == want["type"] == "faces" and len(got["faces"]) == 1
    for g, w in zip(got["faces"], want["faces"], strict=True):
        assert g["box"] == w["box"] and g["label"] == w["label"]
        assert g["probs"] == pytest.approx(w["probs"], abs=1e-6)
    first = live.pid
    assert _live_answer(client, photo)["type"] == "faces" and live.pid == first  # kept for the next session


def test_a_live_frame_over_its_budget_ends_the_session_and_its_worker_is_replaced(checkpoint, photo):  # noqa: F811
    """A frame that holds the live worker past its budget (a JPEG of 1,000 scans, allowed here so that it reaches
    the decoder) ends its session with 1011 and the reason; the worker is killed, and the next session is served
    by a fresh one."""
    from ferlab.serve.live import LiveLimits
    app = create_app(model=str(checkpoint), detector="none", threads=1, max_jpeg_scans=10**6, max_pixels=10_000_000,
                     live=LiveLimits(frame_budget_s=1.0, max_pixels=10_000_000))
    with TestClient(app, base_url=LOCAL) as client:
        with client.websocket_connect(LIVE) as ws:
            assert ws.receive_json()["type"] == "ready"
            [live] = app.state.live.workers
            old = live.pid
            t0 = time.monotonic()
            ws.send_bytes(scan_bomb(3000, 1000))
            message = ws.receive_json()
            close = ws.receive()
        assert time.monotonic() - t0 < 8  # the budget plus stopping the worker, not the 5 s decode
        assert "budget of 1 s" in message["detail"] and close["code"] == 1011, (message, close)
        assert not _alive(old)
        assert _live_answer(client, photo)["type"] == "faces" and live.pid not in (None, old)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _children(pid: int) -> set[int]:
    """Every descendant of `pid` (Linux /proc)."""
    out = set()
    for task in Path(f"/proc/{pid}/task").iterdir():
        for child in (task / "children").read_text().split():
            out |= {int(child)} | _children(int(child))
    return out


def _wait_for_health(proc: subprocess.Popen, port: int, limit_s: float = 120) -> None:
    """Until the `ferlab serve` in `proc` answers /health on `port` (its model loaded); fails if it exits first."""
    import httpx
    end = time.time() + limit_s
    while True:
        assert proc.poll() is None, proc.stderr.read().decode()[-2000:]
        assert time.time() < end, f"ferlab serve did not answer /health within {limit_s:.0f} s"
        try:
            if httpx.get(f"http://127.0.0.1:{port}/health", timeout=2).status_code == 200:
                return
        except httpx.TransportError:
            time.sleep(0.2)


def _alive(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().split(")")[-1].split()[0] != "Z"
    except FileNotFoundError:
        return False


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")
@pytest.mark.parametrize("stop", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_ferlab_serve_keeps_torch_in_its_worker_and_leaves_no_process_behind(checkpoint, photo, stop):  # noqa: F811
    import httpx
    port = free_port()
    proc = subprocess.Popen([sys.executable, "-m", "ferlab.cli", "serve", "--model", str(checkpoint),
                             "--detector", "none", "--port", str(port), "--threads", "1"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        _wait_for_health(proc, port)
        children = _children(proc.pid)
        workers = [p for p in children if "libtorch_cpu" in Path(f"/proc/{p}/maps").read_text()]
        assert len(workers) == 1, children  # the model was loaded before /health answered
        assert "libtorch_cpu" not in Path(f"/proc/{proc.pid}/maps").read_text()  # the server stays light
        cpus = sorted(os.sched_getaffinity(0))
        if len(cpus) >= 2:  # pinned: the server on the core it keeps, its worker on the others
            assert os.sched_getaffinity(proc.pid) == {cpus[0]}
            assert os.sched_getaffinity(workers[0]) == set(cpus[1:])
        r = httpx.post(f"http://127.0.0.1:{port}/v1/predict", files={"file": ("a.jpg", photo, "image/jpeg")},
                       timeout=60)
        assert r.status_code == 200 and len(r.json()["faces"]) == 1, r.text
        children |= _children(proc.pid)
        proc.send_signal(stop)
        proc.wait(30)
        log = proc.stderr.read().decode()
        # uvicorn shuts down cleanly, then re-raises the signal it caught (exit -15, or 130 from Ctrl-C)
        assert "Application shutdown complete" in log and proc.returncode in (0, -stop, 130), (proc.returncode, log)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)
    end = time.time() + 10
    while any(_alive(p) for p in children) and time.time() < end:
        time.sleep(0.1)
    assert not [p for p in children if _alive(p)], "processes outlived ferlab serve"


def _clip(path: Path, frames: int) -> Path:
    """A 1280x720 clip of the astronaut (made here), slow enough to analyse that it is surely in flight."""
    import cv2
    canvas = np.zeros((720, 1280, 3), np.uint8)
    canvas[100:612, 300:812] = astronaut()
    vw = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"mp4v"), 25.0, (1280, 720))
    for i in range(frames):
        vw.write(cv2.cvtColor(np.roll(canvas, 4 * i, axis=1), cv2.COLOR_RGB2BGR))
    vw.release()
    return path


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")
@pytest.mark.parametrize("stop", [signal.SIGTERM, signal.SIGINT, signal.SIGKILL], ids=["SIGTERM", "SIGINT", "SIGKILL"])
def test_ferlab_serve_stops_with_a_video_in_flight_and_no_worker_outlives_it(checkpoint, tmp_path, stop):  # noqa: F811
    """With a long video being analysed, SIGTERM or Ctrl-C stop the server and its worker within 10 s and
    leave no temp video; a SIGKILLed server leaves no worker running either (the worker watches its parent)."""
    import httpx
    clip = _clip(tmp_path / "clip.mp4", 300)
    temp = tmp_path / "tmp"
    temp.mkdir()
    port = free_port()
    proc = subprocess.Popen([sys.executable, "-m", "ferlab.cli", "serve", "--model", str(checkpoint), "--port",
                             str(port), "--threads", "1", "--max-video-frames", "1000"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env={**os.environ, "TMPDIR": str(temp)})
    children: set[int] = set()
    try:
        _wait_for_health(proc, port)
        children = _children(proc.pid)
        answer = {}

        def post():
            try:
                answer["r"] = httpx.post(f"http://127.0.0.1:{port}/v1/video", timeout=120,
                                         files={"file": ("clip.mp4", clip.read_bytes(), "video/mp4")})
            except httpx.TransportError as e:
                answer["r"] = e
        client = threading.Thread(target=post, daemon=True)
        client.start()
        end = time.time() + 30
        while not list(temp.glob("ferlab-video-*")) and time.time() < end:
            time.sleep(0.05)
        assert list(temp.glob("ferlab-video-*")), "the video never reached the server"
        time.sleep(1.0)  # well into the analysis (300 frames at 1280x720 take far longer than the 10 s allowed)
        assert client.is_alive()
        t0 = time.monotonic()
        proc.send_signal(stop)
        proc.wait(10)
        end = time.time() + 10 - (time.monotonic() - t0)
        while any(_alive(p) for p in children) and time.time() < end:
            time.sleep(0.1)
        assert not [p for p in children if _alive(p)], "a worker outlived ferlab serve"
        assert time.monotonic() - t0 < 10
        if stop != signal.SIGKILL:  # a killed server cannot tidy up; a stopped one must
            assert list(temp.iterdir()) == []
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)
        for p in children:
            if _alive(p):
                os.kill(p, signal.SIGKILL)


def test_a_video_folder_stays_registered_until_it_is_removed(astronaut_video, tmp_path, monkeypatch):  # noqa: F811
    """A stopping server removes the temp folders in its registry, then the process ends with the request's thread:
    the thread must remove its folder before taking it out of the registry, or a thread stopped between the two
    leaves the upload on disk."""
    import io
    import shutil

    import ferlab.serve.app as app_module
    monkeypatch.setenv("TMPDIR", str(tmp_path))
    monkeypatch.setattr(app_module.tempfile, "tempdir", None)  # tempfile reads TMPDIR again
    registry: set[str] = set()
    seen = []
    real_rmtree = shutil.rmtree

    def rmtree(path, *args, **kwargs):
        seen.append((path, path in registry, os.path.isfile(os.path.join(path, "upload.mp4"))))
        real_rmtree(path, *args, **kwargs)
    monkeypatch.setattr(app_module.shutil, "rmtree", rmtree)
    data = astronaut_video.read_bytes()
    with app_module.upload_copy(io.BytesIO(data), 2**30, registry) as path:
        assert Path(path).read_bytes() == data and os.path.dirname(path) in registry
    (folder, registered, full), = seen
    assert registered and full and folder == os.path.dirname(path)
    assert registry == set() and not os.path.exists(folder) and list(tmp_path.iterdir()) == []
