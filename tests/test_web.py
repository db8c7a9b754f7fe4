"""The web page end to end: real server, real headless Chromium, a real photo through the file input."""
from __future__ import annotations

import os
import socket
import threading
import time
from pathlib import Path

import pytest
import uvicorn
from PIL import Image
from playwright.sync_api import expect, sync_playwright
from skimage.data import astronaut
from test_serve import checkpoint  # noqa: F401  (the same small real checkpoint, trained once)

from ferlab.data.classes import CLASSES
from ferlab.inference.predictor import Predictor
from ferlab.serve.app import create_app

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]
SCREENSHOT = Path(os.environ.get("FERLAB_WEB_SCREENSHOT", "/tmp/ferlab-web-result.png"))

pytestmark = pytest.mark.skipif(not CHROMIUM.exists(), reason="needs /usr/bin/chromium (apt-get install -y chromium)")


@pytest.fixture(scope="module")
def server(checkpoint):  # noqa: F811
    """The real app (a small real checkpoint, cascade detector) under uvicorn on a free port, in a thread."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    app = create_app(Predictor(str(checkpoint), detector="haar"))
    srv = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=srv.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not srv.started:
        if time.monotonic() > deadline or not thread.is_alive():
            pytest.fail("uvicorn did not start within 30 s")
        time.sleep(0.05)
    yield f"http://127.0.0.1:{port}"
    srv.should_exit = True
    thread.join(timeout=10)


@pytest.fixture(scope="module")
def page(server):
    with sync_playwright() as pw:
        # a fake camera (Chromium's test pattern) stands in for the webcam, permission granted without a prompt
        fake_camera = ["--use-fake-device-for-media-stream", "--use-fake-ui-for-media-stream"]
        browser = pw.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS + fake_camera, headless=True)
        page = browser.new_page(viewport={"width": 1100, "height": 900})
        errors = []
        page.on("pageerror", lambda e: errors.append(str(e)))
        page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
        page.errors = errors
        page.goto(server + "/")
        yield page
        browser.close()


def test_upload_shows_the_face_box_and_seven_bars(page, tmp_path):
    photo = tmp_path / "astronaut.png"
    Image.fromarray(astronaut()).save(photo)
    expect(page.locator("#model")).to_contain_text("model vgg_s")

    page.set_input_files("#file", str(photo))
    page.wait_for_selector("#result:not([hidden]) .face", timeout=60_000)

    assert page.locator(".box").count() == 1 and page.locator(".face").count() == 1
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
    img, box = page.locator("#photo").bounding_box(), page.locator(".box").bounding_box()
    nose_x = img["x"] + 222 / 512 * img["width"]
    nose_y = img["y"] + 118 / 512 * img["height"]
    assert box["x"] < nose_x < box["x"] + box["width"] and box["y"] < nose_y < box["y"] + box["height"]
    assert "1 face found" in page.inner_text("#status")
    assert not page.errors, page.errors
    page.screenshot(path=str(SCREENSHOT), full_page=True)


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
