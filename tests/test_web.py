"""The web page end to end: real server, real headless Chromium, a real photo through the file input, a video
made in the test, and Chromium's fake camera for the webcam and live mode (its test pattern, which has no face,
and for live mode's boxes a clip of a moving face made by bench/live_speed.py).

Each test saves a screenshot (in $FERLAB_WEB_SCREENSHOTS, default /tmp/ferlab-web) and checks its pixels.
"""
from __future__ import annotations

import base64
import io
import json
import os
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from playwright.sync_api import expect, sync_playwright
from skimage.data import astronaut
from conftest import load_bench, serving
from test_predict import _video
from test_serve import checkpoint  # noqa: F401  (the same small real checkpoint, trained once)

from ferlab.data.classes import CLASSES
from ferlab.inference.predictor import Predictor
from ferlab.serve.app import create_app

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]
FAKE_CAMERA = ["--use-fake-device-for-media-stream", "--use-fake-ui-for-media-stream"]  # no permission prompt
SHOTS = Path(os.environ.get("FERLAB_WEB_SCREENSHOTS", "/tmp/ferlab-web"))


live_bench = load_bench("live_speed")  # its clip of a moving face: the one the live benchmark measures with

pytestmark = pytest.mark.skipif(not CHROMIUM.exists(), reason="needs /usr/bin/chromium (apt-get install -y chromium)")


def shot(target, name: str) -> np.ndarray:
    """Screenshot of a page or locator, saved under SHOTS for people to look at, returned as RGB pixels."""
    SHOTS.mkdir(parents=True, exist_ok=True)
    png = target.screenshot(path=str(SHOTS / name))
    return np.asarray(Image.open(io.BytesIO(png)).convert("RGB")).astype(int)


def rgb_of(css: str) -> tuple[int, int, int]:
    """'rgb(229, 72, 77)' -> (229, 72, 77)"""
    return tuple(int(v) for v in css[css.index("(") + 1:css.index(")")].split(",")[:3])


def poll(page, check, timeout: float, what: str):
    """Wait for check() to be truthy, polled from Python (the page's CSP forbids wait_for_function's eval).
    Waiting through the page lets Playwright deliver its events (request, response) in the meantime."""
    deadline = time.monotonic() + timeout
    while not (value := check()):
        assert time.monotonic() < deadline, what
        page.wait_for_timeout(50)
    return value


def border_pixel_matches(pixels: np.ndarray, box: dict, origin: dict, colour: tuple) -> bool:
    """The box's left border, halfway down, has the box's colour in a screenshot taken at `origin`."""
    x = round(box["x"] - origin["x"] + 1.5)  # inside the 3 px border
    y = round(box["y"] - origin["y"] + box["height"] / 2)
    return bool(np.abs(pixels[y, x] - np.array(colour)).max() <= 12)


@pytest.fixture(scope="module")
def server(checkpoint):  # noqa: F811
    """The real app (a small real checkpoint, cascade detector) under uvicorn on a free port, in a thread."""
    with serving(create_app(Predictor(str(checkpoint), detector="haar"))) as port:
        yield f"http://127.0.0.1:{port}"


@pytest.fixture(scope="module")
def playwright():
    with sync_playwright() as pw:  # one per thread: every browser of the module comes from it
        yield pw


def _open(browser, url: str):
    page = browser.new_page(viewport={"width": 1100, "height": 900})
    errors = []
    page.on("pageerror", lambda e: errors.append(str(e)))
    page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
    page.errors = errors
    page.goto(url)
    return page


@pytest.fixture(scope="module")
def page(server, playwright):
    # a fake camera (Chromium's test pattern) stands in for the webcam, permission granted without a prompt
    browser = playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS + FAKE_CAMERA, headless=True)
    yield _open(browser, server + "/")
    browser.close()


@pytest.fixture(scope="module")
def face_page(server, playwright, tmp_path_factory):
    """The page in a browser whose fake camera plays bench/live_speed.py's clip: her face moving left and right
    (640x480, 30 frames/s), each frame's number in blocks along its bottom edge."""
    clip = live_bench.make_clip(tmp_path_factory.mktemp("live") / "clip.y4m")
    browser = playwright.chromium.launch(executable_path=str(CHROMIUM), headless=True,
                                         args=CHROMIUM_ARGS + FAKE_CAMERA + [f"--use-file-for-fake-video-capture={clip}"])
    yield _open(browser, server + "/")
    browser.close()


@pytest.fixture(autouse=True)
def _fresh_errors(request):
    """Each test checks only its own page errors (the page is shared; a deliberate 4xx logs one)."""
    if "page" in request.fixturenames:
        request.getfixturevalue("page").errors.clear()


def test_upload_shows_the_face_box_and_seven_bars(page, tmp_path):
    photo = tmp_path / "astronaut.png"
    Image.fromarray(astronaut()).save(photo)
    expect(page.locator("#model")).to_contain_text("model vgg_s")

    page.set_input_files("#file", str(photo))
    page.wait_for_selector("#result:not([hidden]) .face", timeout=60_000)

    assert page.locator("#boxes .box").count() == 1 and page.locator(".face").count() == 1
    label = page.text_content(".face .label")
    assert label in CLASSES
    bars = page.locator(".face .bar-row")
    assert [bars.nth(i).get_attribute("data-class") for i in range(bars.count())] == list(CLASSES)
    meters = page.locator(".face .bar").evaluate_all("els => els.map(e => e.getAttribute('aria-valuenow'))")
    values = [float(v) for v in meters]
    assert sum(values) == pytest.approx(1.0, abs=0.01)
    assert page.get_attribute(".face .bar-row.top", "data-class") == label
    assert CLASSES[max(range(len(CLASSES)), key=values.__getitem__)] == label

    # the box sits on her face: the nose (222, 118) of the 512x512 photo is inside it on screen
    img, box = page.locator("#photo").bounding_box(), page.locator("#boxes .box").bounding_box()
    nose_x = img["x"] + 222 / 512 * img["width"]
    nose_y = img["y"] + 118 / 512 * img["height"]
    assert box["x"] < nose_x < box["x"] + box["width"] and box["y"] < nose_y < box["y"] + box["height"]
    assert "1 face found" in page.inner_text("#status")
    assert not page.errors, page.errors
    shot(page, "photo-page.png")
    # in the screenshot, the box's border is drawn in its label's colour where the box says
    stage = page.locator("#stage")
    pixels = shot(stage, "photo-stage.png")
    colour = rgb_of(page.locator("#boxes .box").evaluate("b => getComputedStyle(b).borderLeftColor"))
    assert border_pixel_matches(pixels, box, stage.bounding_box(), colour), colour


def test_downloads_give_the_annotated_photo_and_the_json(page, tmp_path):
    """'Download image' is the photo at its own size with the box drawn on it; 'Download JSON' is the server's answer."""
    original = astronaut()
    photo = tmp_path / "astronaut.png"
    Image.fromarray(original).save(photo)
    with page.expect_response("**/v1/predict") as answer:
        page.set_input_files("#file", str(photo))
    page.wait_for_selector("#result:not([hidden]) .face", timeout=60_000)
    response = answer.value.json()
    [face] = response["faces"]

    with page.expect_download() as dl:
        page.click("#download-image")
    assert dl.value.suggested_filename == "astronaut-ferlab.png"
    dl.value.save_as(SHOTS / "download-annotated.png")  # kept to look at, with the screenshots
    drawn = np.asarray(Image.open(dl.value.path()).convert("RGB")).astype(int)
    assert drawn.shape == original.shape  # the photo's own size, not the size on screen
    x, y, w, h = face["box"]
    diff = np.abs(drawn - original).max(axis=2)
    assert (diff[y + h // 2, x:x + 3] > 60).all()  # the box's left edge is drawn in
    assert diff[y + 10:y + h - 10, x + 10:x + w - 10].max() <= 2  # inside the box the face is untouched
    assert diff[-60:, -60:].max() <= 2  # and so is a corner far from it
    shot(page, "photo-downloads.png")

    with page.expect_download() as dl:
        page.click("#download-json")
    assert dl.value.suggested_filename == "astronaut-ferlab.json"
    assert json.loads(Path(dl.value.path()).read_text()) == response
    assert not page.errors, page.errors


def test_non_image_shows_the_servers_message(page, tmp_path):
    junk = tmp_path / "notes.jpg"
    junk.write_bytes(b"this is not a photo")
    page.set_input_files("#file", str(junk))
    page.wait_for_selector("#status.error")
    assert "Error 415" in page.inner_text("#status") and "not a supported image" in page.inner_text("#status")
    assert page.locator("#result").is_hidden()


def test_webcam_photo_is_sent_and_answered(page):
    """Webcam -> take photo -> upload: the fake camera's test pattern has no face, so the server's message shows."""
    page.click("#webcam")
    # polled from Python: wait_for_function evaluates strings with eval, which the page's CSP forbids
    deadline = time.monotonic() + 20
    while not page.evaluate("document.getElementById('video').videoWidth"):
        assert time.monotonic() < deadline, "the fake camera never delivered a frame"
        time.sleep(0.1)
    assert page.locator("#camera").is_visible() and page.locator("#drop").is_hidden()
    with page.expect_response("**/v1/predict") as answer:
        page.click("#capture")
    assert answer.value.status == 200 and answer.value.json()["filename"] == "webcam.jpg"
    page.wait_for_selector("#result:not([hidden]) .empty")
    assert "no face" in page.inner_text("#faces")
    assert page.locator("#camera").is_hidden() and page.locator(".box").count() == 0
    pixels = shot(page, "webcam-photo.png")
    assert pixels.std() > 5  # a rendered page, not a blank one


class Traffic:
    """Counts the page's /v1/predict requests, answers and the most of them in flight at once."""

    def __init__(self, page):
        self.page, self.sent, self.answers, self.in_flight, self.peak = page, 0, [], 0, 0
        self.handlers = {"request": self.request, "requestfinished": self.finished, "requestfailed": self.finished,
                         "response": self.response}
        for event, fn in self.handlers.items():
            page.on(event, fn)

    @staticmethod
    def ours(r) -> bool:
        return r.url.split("?")[0].endswith("/v1/predict")

    def request(self, r):
        if self.ours(r):
            self.sent += 1
            self.in_flight += 1
            self.peak = max(self.peak, self.in_flight)

    def finished(self, r):
        if self.ours(r):
            self.in_flight -= 1

    def response(self, r):
        if self.ours(r):
            self.answers.append(r.status)

    def close(self):
        for event, fn in self.handlers.items():
            self.page.remove_listener(event, fn)


class Socket:
    """Follows one of the page's WebSockets: binary frames sent, answers received, the most frames in flight."""

    def __init__(self, ws):
        self.url, self.sent, self.answers, self.peak, self.closed = ws.url, 0, [], 0, False
        ws.on("framesent", self.frame_sent)
        ws.on("framereceived", self.frame_received)
        ws.on("close", lambda _: setattr(self, "closed", True))

    def frame_sent(self, payload):
        if isinstance(payload, bytes):
            self.sent += 1
            self.peak = max(self.peak, self.sent - len(self.answers))

    def frame_received(self, payload):
        message = json.loads(payload)
        if "frame" in message:
            self.answers.append(message)


def test_live_mode_streams_frames_over_a_websocket_and_stop_releases_the_camera(page):
    """Live mode against the real server: the fake camera's test pattern has no face, so what is checked is the
    loop: frames go over /v1/live (none to /v1/predict), JPEGs scaled to the server's max_side, never more than two
    in flight, each answered; the readout shows frames/s and how far behind; Stop ends it all."""
    sockets, traffic = [], Traffic(page)
    page.on("websocket", lambda ws: sockets.append(Socket(ws)))
    try:
        page.click("#go-live")
        poll(page, lambda: page.get_attribute("#live", "aria-pressed") == "true", 10, "live mode did not start")
        assert page.locator("#camera").is_visible() and page.locator("#capture").is_disabled()
        poll(page, lambda: page.evaluate("window.ferlabLive.answered") >= 10, 60,
             f"live mode got {page.evaluate('window.ferlabLive.answered')} answers in 60 s")
        [sock] = sockets
        assert sock.url.endswith("/v1/live") and traffic.sent == 0
        assert page.evaluate("window.ferlabLive.transport") == "websocket"
        # pipelined: the next frame travels while one is analysed, and no more
        assert 1 <= sock.peak <= 2, (sock.peak, sock.sent, len(sock.answers))
        assert all(a["type"] == "faces" and a["faces"] == [] for a in sock.answers), sock.answers[:3]
        assert [a["frame"] for a in sock.answers] == list(range(len(sock.answers)))
        assert max(sock.answers[0]["width"], sock.answers[0]["height"]) == 320  # scaled down by the page
        fps = poll(page, lambda: float(page.get_attribute("#fps", "data-fps") or 0), 5, "no frames/s readout")
        assert fps > 0.5, fps
        assert "frames/s · " in page.inner_text("#fps") and "ms behind · 0 faces" in page.inner_text("#fps")
        latencies = page.evaluate("window.ferlabLive.latencyMs")
        assert latencies and all(0 < ms < 10_000 for ms in latencies), latencies
        pixels = shot(page.locator("#live-stage"), "live-test-pattern.png")
        assert pixels.std() > 20  # the camera's picture is on show

        page.evaluate("window.__track = document.getElementById('video').srcObject.getVideoTracks()[0]")
        page.click("#stop")
        sent = page.evaluate("window.ferlabLive.sent")
        page.wait_for_timeout(1500)
        assert page.evaluate("window.ferlabLive.sent") == sent, "frames were still sent after Stop"
        assert sock.closed  # the page closed its socket
        assert page.evaluate("window.__track.readyState") == "ended"  # the camera is released
        assert page.evaluate("document.getElementById('video').srcObject") is None
        assert page.locator("#camera").is_hidden() and page.locator("#drop").is_visible()
        assert not page.errors, page.errors
    finally:
        traffic.close()


def test_live_mode_falls_back_to_http_where_the_websocket_fails(page, server):
    """A WebSocket that closes before the server said a word (a proxy that drops it, say): live mode goes on over
    POST /v1/predict, one frame at a time, and says so."""
    other = page.context.browser.new_page()
    other.route_web_socket("**/v1/live", lambda ws: ws.close())  # never reaches the server
    errors = []
    other.on("pageerror", lambda e: errors.append(str(e)))
    traffic = Traffic(other)
    try:
        other.goto(server + "/")
        other.click("#go-live")
        poll(other, lambda: len(traffic.answers) >= 5, 60, f"live mode sent {traffic.sent} frames over HTTP in 60 s")
        assert set(traffic.answers) == {200} and traffic.peak == 1, (traffic.answers, traffic.peak)
        assert other.evaluate("window.ferlabLive.transport") == "http"
        poll(other, lambda: "(over HTTP)" in other.inner_text("#fps"), 5, other.inner_text("#fps"))
        other.click("#stop")
        assert not errors, errors
    finally:
        traffic.close()
        other.close()


SAMPLE = """([x0, step, y, bits]) => {
    // what the page shows now: the drawn frame's number (its blocks) and its boxes, read in one go
    const layer = document.getElementById('live-boxes'), canvas = document.getElementById('live-frame');
    if (canvas.hidden || layer.dataset.frame === undefined) return null;
    const g = canvas.getContext('2d');
    let number = 0;
    for (let b = 0; b < bits; b++) {
        const d = g.getImageData(x0 + step * b, y, 1, 1).data;
        if ((d[0] + d[1] + d[2]) / 3 > 128) number += 1 << b;
    }
    const rect = (e) => { const r = e.getBoundingClientRect();
                          return {x: r.x, y: r.y, width: r.width, height: r.height}; };
    return {id: layer.dataset.frame, number, size: [canvas.width, canvas.height], layer: rect(layer),
            boxes: [...layer.querySelectorAll('.box')].map(rect)}; }"""


def test_live_mode_draws_each_frame_with_its_own_boxes(face_page):
    """The fake camera plays her face moving left and right; the server (Haar, the small model) boxes it in each
    live frame. Sampled while it runs, the page shows each analysed frame with the box found in that frame:
    the frame's own number (read off the drawn picture) says where her nose is, and it is inside the box, mirrored
    like the video, in at least 10 frames; and the box's offset from the nose stays within the detector's jitter.
    A box drawn over a later frame than its own would be off by 16 px per frame of lag, one way while she moves
    right and the other way while she moves left."""
    page, lb = face_page, live_bench
    page.click("#go-live")
    poll(page, lambda: page.evaluate("window.ferlabLive.answered") >= 1, 60, "no live answer within 60 s")
    samples, seen = [], set()
    deadline = time.monotonic() + 60
    def enough():  # 12 boxed frames, from both halves of the clip (moving right, then left)
        numbers = [s["number"] for s in samples if len(s["boxes"]) == 1]
        return len(numbers) >= 12 and min(numbers) < lb.STEPS <= max(numbers)

    while not enough() and time.monotonic() < deadline:
        s = page.evaluate(SAMPLE, [16 + 16, lb.BLOCK, lb.BLOCK_Y + 12, lb.BITS])
        if s is not None and s["id"] not in seen:
            seen.add(s["id"])
            samples.append(s)
        page.wait_for_timeout(20)
    shot(page.locator("#live-stage"), "live-face.png")
    boxed = [s for s in samples if len(s["boxes"]) == 1]
    assert len(boxed) >= 10 and len(boxed) >= 0.8 * len(samples), (len(boxed), len(samples))
    offsets = []
    for s in boxed:
        assert s["size"] == [lb.WIDTH, lb.HEIGHT]  # the frame is drawn at the camera's own size
        layer, [box] = s["layer"], s["boxes"]
        sx, sy = lb.WIDTH / layer["width"], lb.HEIGHT / layer["height"]
        # the layer shows the frame mirrored: its right edge is the frame's left edge
        cx = lb.WIDTH - (box["x"] - layer["x"] + box["width"] / 2) * sx
        cy = (box["y"] - layer["y"] + box["height"] / 2) * sy
        nx, ny = lb.nose_at(s["number"])
        assert abs(cx - nx) < box["width"] * sx / 2 and abs(cy - ny) < box["height"] * sy / 2, (s, nx, ny)
        offsets.append(cx - nx)
    numbers = {s["number"] for s in boxed}
    assert min(numbers) < lb.STEPS <= max(numbers), numbers  # seen moving both ways
    assert max(offsets) - min(offsets) <= 12, offsets  # each box over its own frame (Haar's jitter: 5 px here)
    stats = page.evaluate("window.ferlabLive")
    assert stats["transport"] == "websocket" and stats["drawn"] >= 10 and stats["errors"] == 0
    poll(page, lambda: "ms behind · 1 face: " in page.inner_text("#fps"), 5, "the readout never named her face")

    page.click("#live")  # the toggle: the loop stops, the camera stays on
    assert page.get_attribute("#live", "aria-pressed") == "false"
    assert page.locator("#live-boxes .box").count() == 0 and page.locator("#live-frame").is_hidden()
    assert page.locator("#camera").is_visible()
    page.click("#stop")
    assert not page.errors, page.errors


def test_video_upload_shows_progress_then_the_annotated_video_timeline_and_tracks(page, tmp_path):
    """A video made here (the astronaut moving right) through the same file input, its upload slowed down (Chromium's
    network throttling): the progress bar fills as the bytes go, turns indeterminate while the server analyses, and
    goes; then the annotated video plays, the timeline and one table row per face track show their dominant emotion,
    and the annotated MP4, the CSV and the JSON download as the server answered them."""
    small = np.asarray(Image.fromarray(astronaut()).resize((256, 256), Image.BILINEAR))
    video = tmp_path / "astronaut.mp4"
    _video(video, small, n=8, fps=5.0, dx=6)
    page.evaluate("""() => { window.__statuses = []; window.__bar = [];
        const status = document.getElementById('status'), bar = document.getElementById('progress');
        new MutationObserver(() => window.__statuses.push(status.textContent))
            .observe(status, {childList: true, characterData: true, subtree: true});
        new MutationObserver(() => window.__bar.push(bar.hidden ? 'hidden' : bar.hasAttribute('value') ? bar.value : 'busy'))
            .observe(bar, {attributes: true}); }""")
    cdp = page.context.new_cdp_session(page)
    cdp.send("Network.enable")  # about 2 s to upload, so that its progress shows
    cdp.send("Network.emulateNetworkConditions", {"offline": False, "latency": 0, "downloadThroughput": -1,
                                                   "uploadThroughput": video.stat().st_size / 2})
    try:
        with page.expect_response("**/v1/video?annotate=true", timeout=60_000) as answer:
            page.set_input_files("#file", str(video))
    finally:
        cdp.send("Network.emulateNetworkConditions", {"offline": False, "latency": 0, "downloadThroughput": -1,
                                                       "uploadThroughput": -1})
        cdp.detach()
    assert answer.value.status == 200
    body = answer.value.json()
    page.wait_for_selector("#video-result:not([hidden])")
    statuses = page.evaluate("window.__statuses")
    assert any(s.startswith("Uploading astronaut.mp4") and s.endswith("%") for s in statuses), statuses
    assert any(s.startswith("Analysing astronaut.mp4") for s in statuses), statuses
    bar = page.evaluate("window.__bar")
    fractions = [v for v in bar[:bar.index("busy")] if isinstance(v, (int, float))]
    # filling up (the throttled body goes in 16 KiB chunks: this 21 KB video shows one step between 0 and 1)
    assert any(0 < v < 1 for v in fractions) and fractions == sorted(fractions) and fractions[-1] == 1, bar
    assert bar[-1] == "hidden" and "busy" in bar, bar  # then busy while analysed, then gone
    assert page.locator("#result").is_hidden() and page.locator("#progress").is_hidden()

    assert body["frames_analysed"] == 8 and len(body["tracks"]) == 1
    [track] = body["tracks"]
    assert poll(page, lambda: page.evaluate("document.getElementById('timeline').naturalWidth"), 5, "no timeline") > 500
    rows = page.locator("#tracks tbody tr")
    assert rows.count() == 1 and rows.first.get_attribute("data-track") == str(track["track"])
    assert page.text_content("#tracks tbody .chip") == track["label"]
    assert "astronaut.mp4: all 8 frames analysed, 1 face track" in page.inner_text("#video-caption")
    player = page.locator("#annotated")
    assert player.is_visible()
    poll(page, lambda: player.evaluate("v => v.readyState >= 1"), 10, "the annotated video never loaded")
    assert player.evaluate("v => [v.videoWidth, v.videoHeight]") == [256, 256]
    assert player.evaluate("v => v.duration") == pytest.approx(8 / 5, abs=0.1)
    shot(page, "video-page.png")
    figure = page.locator(".timeline img")
    pixels = shot(figure, "video-timeline.png")
    assert pixels.std() > 20 and (pixels < 200).any(axis=2).mean() > 0.05  # a plot, not a blank image

    with page.expect_download() as dl:
        page.click("#download-video")
    assert dl.value.suggested_filename == "astronaut-ferlab.mp4"
    assert Path(dl.value.path()).read_bytes() == base64.b64decode(body["annotated_video"].split(",", 1)[1])
    with page.expect_download() as dl:
        page.click("#download-csv")
    assert dl.value.suggested_filename == "astronaut-ferlab.csv"
    assert Path(dl.value.path()).read_bytes() == body["emotions_csv"].encode()
    assert body["emotions_csv"].startswith("time_s,frame,faces,angry,")
    with page.expect_download() as dl:
        page.click("#download-video-json")
    assert json.loads(Path(dl.value.path()).read_text()) == {k: v for k, v in body.items() if k != "annotated_video"}
    assert not page.errors, page.errors


@pytest.mark.parametrize("width, height", [(4000, 1000), (1000, 4000)])
def test_a_big_photo_fits_its_column_and_the_window(page, tmp_path, width, height):
    """A 4000 px wide panorama and a 4000 px tall portrait: the photo is never wider than its column (nothing scrolls
    sideways) nor taller than 75% of the window, keeps its shape, and the figure that holds the boxes wraps it
    exactly, so a box at the right edge lands where the answer says, its tag inside the picture. The page is what is
    tested: the answer (the server's shape for such a photo) is given by route; the server's own handling of big
    photos is tested in test_serve."""
    photo = tmp_path / f"big-{width}x{height}.jpg"
    Image.fromarray(astronaut()).resize((width, height), Image.BILINEAR).save(photo, quality=80)
    box = [width - 330, 40, 300, 300]
    probs = {c: 0.01 for c in CLASSES} | {"happy": 0.94}
    answer = {"filename": photo.name, "width": width, "height": height, "message": None, "model": "vgg_s",
              "classes": list(CLASSES), "elapsed_ms": 1.0,
              "faces": [{"box": box, "score": 1.0, "label": "happy", "probs": probs}]}
    page.route("**/v1/predict", lambda route: route.fulfill(status=200, json=answer))
    try:
        page.set_input_files("#file", str(photo))
        page.wait_for_selector("#result:not([hidden]) .face")
        img = page.locator("#photo")
        poll(page, lambda: img.evaluate("i => i.complete && i.naturalWidth > 0"), 10, "the photo never loaded")
        assert img.evaluate("i => [i.naturalWidth, i.naturalHeight]") == [width, height]
        shown, column = img.bounding_box(), page.locator(".result-main").bounding_box()
        assert column["x"] - 0.5 <= shown["x"] and shown["x"] + shown["width"] <= column["x"] + column["width"] + 0.5
        assert shown["height"] <= 0.75 * page.viewport_size["height"] + 1, shown
        assert shown["width"] / shown["height"] == pytest.approx(width / height, rel=0.01)
        assert page.evaluate("document.documentElement.scrollWidth <= document.documentElement.clientWidth")
        stage = page.locator("#stage").bounding_box()
        for k in ("x", "y", "width", "height"):
            assert stage[k] == pytest.approx(shown[k], abs=1), (k, stage, shown)
        drawn = page.locator("#boxes .box").bounding_box()
        x, y, w, h = box
        assert drawn["x"] == pytest.approx(shown["x"] + x / width * shown["width"], abs=1.5)
        assert drawn["y"] == pytest.approx(shown["y"] + y / height * shown["height"], abs=1.5)
        assert drawn["width"] == pytest.approx(w / width * shown["width"], abs=1.5)
        tag = page.locator("#boxes .box .tag").bounding_box()
        assert stage["x"] - 0.5 <= tag["x"] and tag["x"] + tag["width"] <= stage["x"] + stage["width"] + 0.5, (tag, stage)
        shot(page, f"big-photo-{width}x{height}.png")
        assert not page.errors, page.errors
    finally:
        page.unroute("**/v1/predict")


def test_redoc_renders_offline(server, page):
    """/redoc renders the API's operations with every request answered by this server: its script's logo, which
    would come from its maker's CDN, is never asked for, and nothing on the page complains."""
    docs = page.context.browser.new_page()
    requests, errors = [], []
    docs.on("request", lambda r: requests.append(r.url))
    docs.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
    docs.on("pageerror", lambda e: errors.append(str(e)))
    docs.goto(server + "/redoc")
    docs.wait_for_selector("h2:has-text('Emotion of every face in a video')", timeout=30_000)
    docs.wait_for_timeout(1000)  # the sidebar (where the logo was) renders after the operations
    assert docs.locator("h2").all_inner_texts()[:3] == [
        "Liveness and model information", "Emotion of every face in a photo",
        "Emotion of every face in a video, frame by frame, with the emotion timeline"]
    assert docs.get_by_text("API docs by Redocly").count() == 1
    outside = [u for u in requests if not u.startswith((server, f"blob:{server}"))]
    assert requests and not outside, outside
    assert not errors, errors
    docs.close()


def test_api_docs_render_offline(server, page):
    """Swagger UI renders the API's operations with every request answered by this server (no CDN)."""
    docs = page.context.browser.new_page()  # the same browser: one Playwright per thread
    requests = []
    docs.on("request", lambda r: requests.append(r.url))
    docs.goto(server + "/docs")
    docs.wait_for_selector(".opblock", timeout=30_000)
    paths = docs.locator(".opblock-summary-path").all_inner_texts()
    assert {"/health", "/v1/predict"} <= {p.replace("\u200b", "") for p in paths}, paths
    assert requests and all(u.startswith(server) for u in requests), requests
    docs.close()


def test_explain_lays_each_heat_map_over_its_box(page, tmp_path):
    """Explain asks for explain=true and lays each face's heat map (a PNG the size of its box, in photo pixels) exactly
    over the box; the screenshot changes inside the box only; switching it off removes the maps without a request."""
    photo = tmp_path / "astronaut.png"
    Image.fromarray(astronaut()).save(photo)
    if page.is_checked("#explain"):
        page.uncheck("#explain")
    page.set_input_files("#file", str(photo))
    page.wait_for_selector("#result:not([hidden]) .face", timeout=60_000)
    stage = page.locator("#stage")
    plain = shot(stage, "explain-off.png")

    with page.expect_response("**/v1/predict?explain=true", timeout=60_000) as answer:
        page.check("#explain")
    assert answer.value.status == 200
    [face] = answer.value.json()["faces"]
    assert face["heatmap"].startswith("data:image/png;base64,")
    page.wait_for_selector("#boxes img.heat")
    assert page.locator("#boxes img.heat").count() == 1
    heat = page.locator("#boxes img.heat")
    poll(page, lambda: heat.evaluate("i => i.complete && i.naturalWidth > 0"), 5, "the heat map never loaded")
    x, y, w, h = face["box"]
    assert heat.evaluate("i => [i.naturalWidth, i.naturalHeight]") == [w, h]  # the box's size in photo pixels
    hb, bb = heat.bounding_box(), page.locator("#boxes .box").bounding_box()
    for k in ("x", "y", "width", "height"):
        assert hb[k] == pytest.approx(bb[k], abs=0.5), (k, hb, bb)  # laid exactly over the box on screen
    assert "heat maps" in page.inner_text("#status")
    explained = shot(stage, "explain-on.png")
    shot(page, "explain-page.png")
    origin = stage.bounding_box()
    inside = np.abs(explained - plain)[round(bb["y"] - origin["y"]) + 4:round(bb["y"] + bb["height"] - origin["y"]) - 4,
                                       round(bb["x"] - origin["x"]) + 4:round(bb["x"] + bb["width"] - origin["x"]) - 4]
    assert inside.mean() > 10  # the map shows over the face
    below = round(bb["y"] + bb["height"] - origin["y"]) + 10
    assert np.abs(explained - plain)[below:].max() <= 2  # and nowhere else (below the box)

    with page.expect_download() as dl:
        page.click("#download-image")
    drawn = np.asarray(Image.open(dl.value.path()).convert("RGB")).astype(int)
    assert np.abs(drawn - astronaut())[y + 10:y + h - 10, x + 10:x + w - 10].mean() > 10  # the map is in the download

    sent = []
    page.on("request", lambda r: sent.append(r.url) if "/v1/" in r.url else None)
    page.uncheck("#explain")
    page.wait_for_timeout(300)
    assert page.locator("#boxes img.heat").count() == 0 and page.locator("#boxes .box").count() == 1
    assert not sent, sent
    assert not page.errors, page.errors
