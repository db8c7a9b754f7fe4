"""The REST API on real inputs: FER2013 faces and a real photo, every kind of bad upload, schema fuzzing.

The model is a small CNN trained for one epoch on the slice (test_predict's `tiny_checkpoint`): the API's
job is to carry the Predictor's answer faithfully, which is checked against the Predictor called directly.
"""
from __future__ import annotations

import base64
import io
import time

import numpy as np
import pytest
import schemathesis
from fastapi.testclient import TestClient
from hypothesis import HealthCheck, given, settings
from PIL import Image
from schemathesis import GenerationMode
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import response_schema_conformance, status_code_conformance
from skimage.data import astronaut
from conftest import serving
from test_predict import _video, tiny_checkpoint

from ferlab.cli import main
from ferlab.data.classes import CLASSES
from ferlab.inference.predictor import Predictor
from ferlab.serve.analysis import decode_image
from ferlab.serve.app import create_app

LOCAL = "http://127.0.0.1"  # the Host a browser on this machine sends; other names are refused

ASTRONAUT_NOSE = (222, 118)  # read off skimage's astronaut photo (512x512): Eileen Collins' nose


@pytest.fixture(scope="session")
def checkpoint(fer_slice, tmp_path_factory):
    """A small real checkpoint trained for one epoch on the slice (never the shipped default model).
    Kept at a fixed place in the session's temp folder, so test_web reuses it instead of training again."""
    path = tmp_path_factory.getbasetemp() / "serve-model" / "tiny.pt"
    return path if path.exists() else tiny_checkpoint(path, fer_slice)


@pytest.fixture(scope="module")
def crops_predictor(checkpoint):
    return Predictor(str(checkpoint), detector="none")


@pytest.fixture(scope="module")
def client(crops_predictor):
    return TestClient(create_app(crops_predictor, max_bytes=200_000, max_pixels=4_000_000), base_url=LOCAL)


@pytest.fixture(scope="module")
def haar_client(checkpoint):
    return TestClient(create_app(Predictor(str(checkpoint), detector="haar")), base_url=LOCAL)


def encode(array_or_image, fmt="JPEG", **kw) -> bytes:
    im = array_or_image if isinstance(array_or_image, Image.Image) else Image.fromarray(array_or_image)
    buf = io.BytesIO()
    im.save(buf, fmt, **kw)
    return buf.getvalue()


def scan_bomb(side: int, repeats: int) -> bytes:
    """A small progressive JPEG of a flat grey side x side picture whose last scan is repeated `repeats` times:
    every scan is a pass of the decoder over the whole image (3000 px, 1,000 repeats: 58 KB, 5 s to decode)."""
    data = encode(np.full((side, side), 128, np.uint8), progressive=True, quality=30)
    last = data[data.rfind(b"\xff\xda"):-2]  # the last scan, up to the end-of-image marker
    return data[:-2] + last * repeats + b"\xff\xd9"


def upload(client, data: bytes, name="photo.jpg", ctype="image/jpeg"):
    return client.post("/v1/predict", files={"file": (name, data, ctype)})


def test_health(client):
    r = client.get("/health")
    assert r.status_code == 200
    h = r.json()
    assert h["status"] == "ok" and h["classes"] == list(CLASSES)
    assert h["model"] == "vgg_s" and h["detector"] == "none"
    assert h["max_bytes"] == 200_000 and h["max_pixels"] == 4_000_000


def test_fer_faces_match_the_predictor(client, crops_predictor, fer_slice):
    """One real face of every class: the API answers exactly what the Predictor says on the same pixels."""
    picks = [int(np.flatnonzero(fer_slice["labels"] == k)[0]) for k in range(len(CLASSES))]
    for i in picks:
        raw = fer_slice["jpeg"][i]
        r = upload(client, raw, name=fer_slice["names"][i])
        assert r.status_code == 200, r.text
        body = r.json()
        assert (body["width"], body["height"]) == fer_slice["pixels"][i].shape[::-1]
        assert body["classes"] == list(CLASSES) and body["message"] is None
        assert body["filename"] == fer_slice["names"][i]
        [face] = body["faces"]
        [direct] = crops_predictor.predict(np.asarray(Image.open(io.BytesIO(raw)).convert("RGB")))
        assert face["box"] == [0, 0, body["width"], body["height"]]
        assert set(face["probs"]) == set(CLASSES)
        assert sum(face["probs"].values()) == pytest.approx(1.0, abs=1e-4)
        assert face["label"] == max(face["probs"], key=face["probs"].get)
        assert face["score"] == direct["score"] == 1.0  # detector "none": the whole crop, full confidence
        assert face["label"] == direct["label"]
        for c in CLASSES:
            assert face["probs"][c] == pytest.approx(float(direct["probs"][c]), abs=1e-6)


def test_astronaut_photo_has_one_face_on_her_face(haar_client):
    # PNG keeps the reference pixels exactly: this checks the serving path, not the detector's JPEG tolerance
    r = upload(haar_client, encode(astronaut(), "PNG"), "astronaut.png", "image/png")
    assert r.status_code == 200, r.text
    body = r.json()
    assert (body["width"], body["height"]) == (512, 512)
    [face] = body["faces"]
    x, y, w, h = face["box"]
    assert x <= ASTRONAUT_NOSE[0] <= x + w and y <= ASTRONAUT_NOSE[1] <= y + h, face["box"]
    assert 60 <= w <= 220 and 60 <= h <= 220, face["box"]
    assert face["label"] in CLASSES and sum(face["probs"].values()) == pytest.approx(1.0, abs=1e-4)


def test_no_face_gives_a_message(haar_client):
    r = upload(haar_client, encode(np.full((240, 320, 3), 128, np.uint8), "PNG"), "grey.png", "image/png")
    assert r.status_code == 200, r.text
    assert r.json()["faces"] == [] and "no face" in r.json()["message"]


def test_exif_rotation_is_applied():
    """A phone photo stored sideways with EXIF Orientation=6 is decoded upright (portrait)."""
    im = Image.fromarray(np.zeros((40, 60, 3), np.uint8))
    exif = Image.Exif()
    exif[0x0112] = 6
    assert decode_image(encode(im, exif=exif)).shape == (60, 40, 3)
    assert decode_image(encode(im)).shape == (40, 60, 3)


def _multipart(part: bytes) -> bytes:
    return (b'--xx\r\nContent-Disposition: form-data; name="file"; filename="a.jpg"\r\n'
            b"Content-Type: image/jpeg\r\n\r\n" + part + b"\r\n--xx--\r\n")


@pytest.fixture(scope="module")
def photo() -> bytes:
    return encode(astronaut(), quality=92)


def test_bad_requests_get_clear_4xx(client, photo):
    big_png = encode(Image.new("L", (2500, 2000)), "PNG")  # 5 MP, a few KB: over the 4 MP limit
    assert len(big_png) < 200_000
    cases = {  # what is sent -> (status, a word the message must contain)
        "json body": (client.post("/v1/predict", json={"file": "x"}), 415, "multipart/form-data"),
        "text part": (upload(client, b"hello", "a.txt", "text/plain"), 415, "text/plain"),
        "not an image": (upload(client, b"hello, this is not a photo", "a.jpg"), 415, "JPEG"),
        "truncated": (upload(client, photo[: len(photo) // 2]), 400, "truncated"),
        "over size": (upload(client, photo + bytes(200_000)), 413, "limit"),
        "over size, chunked": (client.post("/v1/predict", headers={"content-type": "multipart/form-data; boundary=xx"},
                                           content=iter([_multipart(bytes(300_000))])), 413, "limit"),
        "over pixels": (upload(client, big_png, "big.png", "image/png"), 413, "pixels"),
        "empty body": (client.post("/v1/predict", headers={"content-type": "multipart/form-data; boundary=xx"},
                                   content=b""), 400, "empty"),
        "empty file": (upload(client, b""), 400, "empty"),
        "missing field": (client.post("/v1/predict", files={"image": ("a.jpg", photo[:1000], "image/jpeg")}),
                          422, "'file'"),
    }
    for what, (r, status, word) in cases.items():
        assert r.status_code == status, (what, r.status_code, r.text)
        assert word in r.json()["detail"], (what, r.json())


@pytest.mark.filterwarnings("ignore::PIL.Image.DecompressionBombWarning")
@pytest.mark.parametrize("side", [10_000, 20_000])  # PIL warns above 89 MP and refuses above 179 MP
def test_decompression_bombs_are_refused_before_decoding(crops_predictor, side):
    bomb = encode(Image.new("1", (side, side)), "PNG")
    assert len(bomb) < 100_000
    # our own limit set far above PIL's: PIL's bomb threshold still caps it, and its error becomes a 413
    c = TestClient(create_app(crops_predictor, max_pixels=10**12), base_url=LOCAL)
    assert c.get("/health").json()["max_pixels"] == Image.MAX_IMAGE_PIXELS
    r = upload(c, bomb, "bomb.png", "image/png")
    assert r.status_code == 413 and "pixels" in r.json()["detail"], r.text


def test_fuzzed_requests_never_get_a_5xx(crops_predictor):
    """Requests generated from the OpenAPI schema, valid and invalid, never get a server error and always
    get a documented status code and body. (Driven through `as_strategy`, because schemathesis's pytest
    fixture loader does not run under pytest 9.)"""
    schema = schemathesis.openapi.from_asgi("/openapi.json", create_app(crops_predictor, max_bytes=100_000,
                                                                        allow_hosts=("testserver",)))
    cases = schema.as_strategy(GenerationMode.POSITIVE) | schema.as_strategy(GenerationMode.NEGATIVE)
    seen = set()

    @given(case=cases)
    @settings(max_examples=60, deadline=None, database=None, suppress_health_check=list(HealthCheck))
    def check(case):
        response = case.call_and_validate(checks=[not_a_server_error, status_code_conformance,
                                                  response_schema_conformance])
        seen.add((case.method, case.path, response.status_code))

    check()
    assert {(m, p) for m, p, _ in seen} == {("GET", "/health"), ("POST", "/v1/predict"), ("POST", "/v1/video")}, seen


def test_cli_serve_refuses_a_missing_model(tmp_path, capsys):
    assert main(["serve", "--model", str(tmp_path / "nope.pt")]) == 2
    assert "nope.pt" in capsys.readouterr().err


def test_uploads_in_flight_are_bounded_by_workers_and_health_never_waits(crops_predictor, fer_slice, monkeypatch):
    """Six clients at once: never more than `workers` uploads are decoded at a time (the others wait holding only
    their compressed bytes), every request still succeeds, and /health answers while every decode is held."""
    import threading
    from concurrent.futures import ThreadPoolExecutor

    import ferlab.serve.analysis as analysis
    real, state, gate = analysis.decode_image, {"now": 0, "peak": 0}, threading.Event()
    lock = threading.Lock()

    def held_decode(data, *limits):
        with lock:
            state["now"] += 1
            state["peak"] = max(state["peak"], state["now"])
        gate.wait(30)
        try:
            return real(data, *limits)
        finally:
            with lock:
                state["now"] -= 1

    monkeypatch.setattr(analysis, "decode_image", held_decode)
    face = encode(fer_slice["pixels"][0])
    for workers in (1, 2):
        state["peak"], gate = 0, threading.Event()
        with TestClient(create_app(crops_predictor, workers=workers), base_url=LOCAL) as c, ThreadPoolExecutor(6) as pool:
            futures = [pool.submit(upload, c, face) for _ in range(6)]
            while state["now"] < workers:  # the first decodes have started and are held
                threading.Event().wait(0.01)
            assert c.get("/health").status_code == 200  # answered while every worker is busy
            gate.set()
            assert [f.result().status_code for f in futures] == [200] * 6
        assert state["peak"] == workers
    with pytest.raises(ValueError, match="workers must be positive"):
        create_app(crops_predictor, workers=0)


def test_docs_work_offline(crops_predictor, monkeypatch):
    """/docs and /redoc load their scripts from this server (the installed fastapi-offline package), never a CDN."""
    import re

    import ferlab.serve.app as app_mod
    client = TestClient(create_app(crops_predictor), base_url=LOCAL)
    for page, asset in (("/docs", "/docs-assets/swagger-ui-bundle.js"), ("/redoc", "/docs-assets/redoc.standalone.js")):
        html = client.get(page)
        assert html.status_code == 200 and asset in html.text
        urls = re.findall(r"""(?:src|href)=["']([^"']+)""", html.text)
        assert urls and all(u.startswith("/") for u in urls), urls  # nothing from another host
        js = client.get(asset)
        assert js.status_code == 200 and len(js.content) > 500_000
        assert b"cdn.redoc.ly" not in js.content  # redoc's logo would come from its maker's CDN
    assert "default-src 'self'" in client.get("/redoc").headers["content-security-policy"]
    assert client.get("/openapi.json").json()["info"]["title"] == "ferlab"

    monkeypatch.setattr(app_mod, "DOCS_ASSETS", lambda: None)
    r = TestClient(create_app(crops_predictor), base_url=LOCAL).get("/docs")
    assert r.status_code == 503 and "pip install fastapi-offline" in r.json()["detail"]


@pytest.fixture(scope="module")
def astronaut_video(tmp_path_factory):
    """8 frames at 5 fps of the astronaut (256 px) moving right 6 px a frame: made here, never committed."""
    small = np.asarray(Image.fromarray(astronaut()).resize((256, 256), Image.BILINEAR))
    path = tmp_path_factory.mktemp("serve-video") / "astronaut.mp4"
    _video(path, small, n=8, fps=5.0, dx=6)
    return path


def upload_video(client, data: bytes, name="astronaut.mp4", ctype="video/mp4", **params):
    return client.post("/v1/video", params=params, files={"file": (name, data, ctype)})


def test_video_gives_tracked_faces_summary_and_timeline(haar_client, checkpoint, astronaut_video):
    """The frames, tracks and probabilities are the Predictor's own on the same file; the summary has one row per
    analysed frame, each track's label is its mean's top class, and the timeline is a real PNG."""
    r = upload_video(haar_client, astronaut_video.read_bytes(), every=2)
    assert r.status_code == 200, r.text
    body = r.json()
    assert (body["width"], body["height"], body["fps"], body["frames_total"]) == (256, 256, 5.0, 8)
    assert body["every"] == 2 and body["frames_analysed"] == 4 and body["note"] is None
    assert [f["frame"] for f in body["frames"]] == [0, 2, 4, 6]
    assert [f["time_s"] for f in body["frames"]] == pytest.approx([0.0, 0.4, 0.8, 1.2])

    direct = [(fr.frame, faces) for fr, faces in Predictor(str(checkpoint), detector="haar").stream(astronaut_video, 2)]
    assert [f["frame"] for f in body["frames"]] == [frame for frame, _ in direct]
    for got, (_, want) in zip(body["frames"], direct):
        assert [f["box"] for f in got["faces"]] == [f["box"] for f in want]
        assert [f["track"] for f in got["faces"]] == [f["track"] for f in want]
        for g, w in zip(got["faces"], want):
            assert g["label"] == w["label"] and g["probs"] == pytest.approx(w["probs"], abs=1e-6)
            assert g["source"] == "astronaut.mp4"  # the upload's name, never the server's temp path
    assert all(len(f["faces"]) == 1 for f in body["frames"])  # she is found in every frame, as one track
    [track] = body["tracks"]
    assert track["track"] == 1 and track["frames"] == 4 and (track["first_s"], track["last_s"]) == (0.0, pytest.approx(1.2))
    mean = {c: np.mean([f["faces"][0]["probs"][c] for f in body["frames"]]) for c in CLASSES}
    assert track["probs"] == pytest.approx(mean, abs=1e-5) and track["label"] == max(mean, key=mean.get)

    assert [(row["frame"], row["faces"]) for row in body["summary"]] == [(0, 1), (2, 1), (4, 1), (6, 1)]
    assert body["summary"][1]["share"] == pytest.approx(body["frames"][1]["faces"][0]["probs"], abs=1e-5)
    assert body["timeline_png"].startswith("data:image/png;base64,")
    plot = np.asarray(Image.open(io.BytesIO(base64.b64decode(body["timeline_png"].split(",", 1)[1]))).convert("RGB"))
    assert plot.shape[1] > 500 and plot.std() > 20  # drawn, not blank


def _decoded_video(data_url: str, tmp_path) -> tuple[list[np.ndarray], float]:
    """The RGB frames and frames/s of an MP4 given as a data:video/mp4;base64 URL."""
    import cv2
    assert data_url.startswith("data:video/mp4;base64,")
    path = tmp_path / "answer.mp4"
    path.write_bytes(base64.b64decode(data_url.split(",", 1)[1]))
    cap = cv2.VideoCapture(str(path))
    frames, fps = [], cap.get(cv2.CAP_PROP_FPS)
    while (got := cap.read())[0]:
        frames.append(cv2.cvtColor(got[1], cv2.COLOR_BGR2RGB))
    cap.release()
    return frames, fps


def test_video_answer_has_the_clis_csv_and_on_request_the_annotated_video(haar_client, checkpoint, astronaut_video,
                                                                          tmp_path, monkeypatch, capsys):
    """`emotions_csv` is the CSV `ferlab predict --save` writes for the same video; with annotate=true,
    `annotated_video` is an H.264 MP4 of the analysed frames at their rate, each face's box and label drawn where
    the answer says and the rest of the picture untouched, scaled down past ANNOTATED_SIDE; without it, null. The
    upload's temp folder, annotated video included, is gone once answered."""
    import csv
    import tempfile

    import ferlab.serve.analysis as analysis
    from ferlab.inference.sources import iter_frames
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path / "server-temp"))
    (tmp_path / "server-temp").mkdir()
    mp4 = astronaut_video.read_bytes()
    plain = upload_video(haar_client, mp4, every=2).json()
    assert plain["annotated_video"] is None
    body = upload_video(haar_client, mp4, every=2, annotate="true").json()
    assert list((tmp_path / "server-temp").iterdir()) == []

    assert main(["predict", str(astronaut_video), "--model", str(checkpoint), "--detector", "haar", "--every", "2",
                 "--save", str(tmp_path / "cli"), "--no-progress"]) == 0
    capsys.readouterr()
    cli = list(csv.reader((tmp_path / "cli" / "astronaut_emotions.csv").read_text().splitlines()))
    ours = list(csv.reader(body["emotions_csv"].splitlines()))
    assert ours[0] == cli[0] == ["time_s", "frame", "faces", *CLASSES] and len(ours) == len(cli) == 5
    for a, b in zip(ours[1:], cli[1:]):
        assert a[:3] == b[:3] and [float(v) for v in a[3:]] == pytest.approx([float(v) for v in b[3:]], abs=1.01e-4)
    assert body["emotions_csv"] == plain["emotions_csv"]

    frames, fps = _decoded_video(body["annotated_video"], tmp_path)
    originals = [fr.image for fr in iter_frames(astronaut_video, 2)]
    assert len(frames) == len(originals) == 4 and fps == pytest.approx(2.5) and frames[0].shape == (256, 256, 3)
    for drawn, original, answer in zip(frames, originals, body["frames"]):
        [face] = answer["faces"]
        x, y, w, h = face["box"]
        orange = lambda im: (im[..., 0] > 170) & (im[..., 1] < 150) & (im[..., 2] < 100)  # noqa: E731
        near = np.s_[max(0, y - 30):y + h + 4, max(0, x - 4):x + w + 4]
        assert orange(drawn[near]).sum() - orange(original[near]).sum() > 100  # the label's tag and the box
        far = np.abs(drawn.astype(int) - original)[y + h + 30:, :]  # below the box: her suit, untouched
        assert far.mean() < 6, far.mean()

    monkeypatch.setattr(analysis, "ANNOTATED_SIDE", 128)
    small = upload_video(haar_client, mp4, every=4, annotate="true").json()
    frames, _ = _decoded_video(small["annotated_video"], tmp_path)
    assert len(frames) == 2 and frames[0].shape == (128, 128, 3)


def test_each_upload_endpoint_sends_the_other_kind_of_file_to_the_other(client, haar_client, astronaut_video, photo):
    """A video sent to /v1/predict (labelled as a video, as bytes, or even as a photo) is a 415 that names /v1/video;
    a photo sent to /v1/video, one that names /v1/predict."""
    mp4 = astronaut_video.read_bytes()
    for ctype in ("video/mp4", "application/octet-stream", "image/jpeg"):
        r = upload(client, mp4, "clip.mp4", ctype)
        assert r.status_code == 415 and "send videos to POST /v1/video" in r.json()["detail"], (ctype, r.text)
    for ctype in ("image/jpeg", "application/octet-stream"):
        r = upload_video(haar_client, photo, "photo.jpg", ctype)
        assert r.status_code == 415 and "send photos to POST /v1/predict" in r.json()["detail"], (ctype, r.text)


def test_openapi_documents_every_endpoint_with_examples_and_readable_names(client):
    """/docs and /redoc show what /openapi.json holds: named schemas (no Body_predict_v1_predict_post), every
    schema, field and parameter described, each operation with a summary, a description and an example answer
    that is a valid answer, and each error status with its cause and an example."""
    import re
    from http import HTTPStatus

    import ferlab.serve.app as app_mod
    spec = client.get("/openapi.json").json()
    schemas = spec["components"]["schemas"]
    assert {"PhotoUpload", "VideoUpload", "Prediction", "VideoPrediction", "Health", "Problem"} <= set(schemas)
    assert all(re.fullmatch(r"[A-Z][A-Za-z]+", n) and not n.startswith("Body") for n in schemas), sorted(schemas)
    for name, schema in schemas.items():
        assert schema.get("description"), name
        for field, body in schema["properties"].items():
            assert body.get("description"), (name, field)
    models = {"health": app_mod.Health, "predict": app_mod.Prediction, "video": app_mod.VideoPrediction}
    operations = {op["operationId"]: (path, op) for path, item in spec["paths"].items() for op in item.values()}
    assert set(operations) == set(models)
    for op_id, (path, op) in operations.items():
        assert op["summary"][0].isupper() and len(op["description"]) > 150, op_id
        assert all(p.get("description") for p in op.get("parameters", [])), op_id
        models[op_id].model_validate(op["responses"]["200"]["content"]["application/json"]["example"])
        if op_id == "health":
            continue
        body = op["requestBody"]["content"]["multipart/form-data"]["schema"]["$ref"].rsplit("/", 1)[1]
        assert body == {"predict": "PhotoUpload", "video": "VideoUpload"}[op_id]
        for status in (400, 403, 413, 415, 422, 503):
            answer = op["responses"][str(status)]
            assert answer["description"] != HTTPStatus(status).phrase, (op_id, status)
            for example in answer["content"]["application/json"]["examples"].values():
                app_mod.Problem.model_validate(example["value"])
    assert "/v1/video" in operations["predict"][1]["description"] and "curl" in operations["video"][1]["description"]


def test_long_video_is_sampled_within_the_frame_limit(checkpoint, astronaut_video):
    c = TestClient(create_app(Predictor(str(checkpoint), detector="haar"), max_video_frames=3), base_url=LOCAL)
    body = upload_video(c, astronaut_video.read_bytes()).json()
    assert body["every"] == 3 and [f["frame"] for f in body["frames"]] == [0, 3, 6]
    assert body["max_frames"] == 3 and body["note"] == ("the video has 8 frames: 1 in 3 analysed, to stay "
                                                                 "within the limit of 3 frames")
    assert c.get("/health").json()["max_video_frames"] == 3


def test_bad_videos_get_clear_4xx_and_leave_no_temp_file(checkpoint, astronaut_video, tmp_path, monkeypatch, photo):
    import tempfile
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    c = TestClient(create_app(Predictor(str(checkpoint), detector="haar"), max_video_bytes=60_000, max_pixels=50_000), base_url=LOCAL)
    mp4 = astronaut_video.read_bytes()
    assert len(mp4) < 60_000
    cases = {  # what is sent -> (status, a word the message must contain)
        "an image": (upload_video(c, photo, "a.jpg", "image/jpeg"), 415, "video"),
        "not a video": (upload_video(c, b"hello, this is not a video at all", "a.mp4"), 415, "MP4"),
        "a playlist": (upload_video(c, b"#EXTM3U\n#EXTINF:1,\nfile:///etc/passwd\n", "a.mp4"), 415, "MP4"),
        "empty": (upload_video(c, b""), 400, "empty"),
        "truncated": (upload_video(c, mp4[:2000]), 415, "could not open"),
        "no frames": (upload_video(c, mp4[:24] + bytes(3000)), 415, "astronaut.mp4"),
        "over size": (upload_video(c, mp4 + bytes(60_000)), 413, "limit"),
        "over pixels": (upload_video(c, mp4), 413, "pixels"),  # 256x256 frames, 50,000 pixel limit
        "every 0": (upload_video(c, mp4, every=0), 422, "every"),
    }
    for what, (r, status, word) in cases.items():
        assert r.status_code == status, (what, r.status_code, r.text)
        assert word in r.json()["detail"], (what, r.json())
        assert str(tmp_path) not in r.json()["detail"], (what, r.json())  # temp paths stay private
    assert list(tmp_path.iterdir()) == []
    ok = upload_video(TestClient(create_app(Predictor(str(checkpoint), detector="haar")), base_url=LOCAL), mp4)
    assert ok.status_code == 200 and list(tmp_path.iterdir()) == []


def test_serve_leaves_one_core_to_the_event_loop(monkeypatch):
    """`ferlab serve` runs inference on all cores but one (so /health is not queued behind busy workers by the
    scheduler), `--threads` overrides it, and with two cores or more the server process is pinned to the core
    it keeps and the workers to the others (`--no-pin` leaves both to the OS). (That the worker process applies
    them: test_serve_worker.)"""
    import os

    import uvicorn

    import ferlab.serve.app as app_mod
    from ferlab.cli import main
    seen, pinned = [], []
    monkeypatch.setattr(app_mod, "create_app", lambda **kw: (kw["threads"], kw["worker_cpus"]))
    monkeypatch.setattr(uvicorn, "run", lambda app, **kw: seen.append((*app, kw["port"])))
    monkeypatch.setattr(os, "sched_setaffinity", lambda pid, cpus: pinned.append((pid, cpus)))  # not this process
    try:
        assert main(["serve", "--detector", "none", "--port", "8123"]) == 0
        assert main(["serve", "--detector", "none", "--port", "8124", "--threads", "2"]) == 0
        assert main(["serve", "--detector", "none", "--port", "8125", "--no-pin"]) == 0
    finally:
        import gc
        gc.unfreeze()  # `ferlab serve` froze the heap for its garbage collector; this is the test process
    cpus = sorted(os.sched_getaffinity(0))
    rest = set(cpus[1:]) if len(cpus) >= 2 else None
    assert seen == [(max(1, len(cpus) - 1), rest, 8123), (2, rest, 8124), (max(1, len(cpus) - 1), None, 8125)]
    assert pinned == ([(0, {cpus[0]})] * 2 if rest else [])


def test_scans_are_counted_from_the_markers_not_from_the_bytes():
    """Baseline 1, progressive 10 (PIL's script), a scan bomb all its scans; a progressive JPEG hidden in the EXIF
    data is payload, not scans (a plain byte count would see 11)."""
    from skimage import data as skimage_data

    from ferlab.data.images import jpeg_scans
    rgb = skimage_data.astronaut()
    assert jpeg_scans(encode(rgb)) == 1
    assert jpeg_scans(encode(rgb, progressive=True)) == 10
    grey = jpeg_scans(scan_bomb(64, 0))  # PIL's progressive script for one channel: fewer scans than for colour
    assert 1 < grey < 10 and jpeg_scans(scan_bomb(64, 500)) == grey + 500
    im = Image.fromarray(rgb)
    exif = im.getexif()
    exif[0x927C] = encode(rgb[::8, ::8], progressive=True)  # a maker note carrying a progressive JPEG
    with_exif = encode(im, exif=exif.tobytes())
    assert with_exif.count(b"\xff\xda") == 11 and jpeg_scans(with_exif) == 1
    assert jpeg_scans(encode(rgb, "PNG")) == 0


def test_a_jpeg_of_thousands_of_scans_is_refused_before_decoding(client, crops_predictor):
    """A 1,000-scan bomb (2 s of decoding at 1900 px) is a 413 at once; a normal progressive photo is served."""
    import time
    t0 = time.perf_counter()
    from ferlab.data.images import jpeg_scans
    bomb = scan_bomb(1900, 1000)  # under the client's 4 MP limit; 2 s of decoding
    r = upload(client, bomb)
    detail = r.json()["detail"]
    assert r.status_code == 413 and f"{jpeg_scans(bomb):,} scans" in detail and "limit is 100" in detail, detail
    assert time.perf_counter() - t0 < 1.0
    ok = upload(client, encode(np.full((300, 300), 128, np.uint8), progressive=True))
    assert ok.status_code == 200, ok.text
    # the limit is the app's to set
    lenient = TestClient(create_app(crops_predictor, max_jpeg_scans=2000), base_url=LOCAL)
    assert upload(lenient, scan_bomb(200, 1000)).status_code == 200


def test_requests_from_other_sites_are_refused(crops_predictor, fer_slice):
    """A page on another site (Origin) or a DNS-rebinding name (Host) cannot drive the local server; this
    server's own page, curl (no Origin), IP addresses and the names and origins allowed are served."""
    face = encode(fer_slice["pixels"][0])
    app = create_app(crops_predictor)
    c = TestClient(app, base_url="http://127.0.0.1:8000")

    def post(**headers):
        return c.post("/v1/predict", files={"file": ("a.jpg", face, "image/jpeg")}, headers=headers)

    assert post().status_code == 200
    assert post(origin="http://127.0.0.1:8000").status_code == 200  # the page this server serves
    evil = post(origin="http://evil.example")
    assert evil.status_code == 403 and "evil.example" in evil.json()["detail"]
    assert post(origin="http://127.0.0.1:9999").status_code == 403  # another local server's page
    assert post(host="evil.example").status_code == 403
    assert c.get("/health", headers={"host": "evil.example:8000"}).status_code == 403
    for host in ("localhost:8000", "[::1]:8000", "192.168.1.20"):
        assert c.get("/health", headers={"host": host}).status_code == 200, host
    allowed = TestClient(create_app(crops_predictor, allow_hosts=("ferlab.lan",),
                                    allow_origins=("https://app.example",)), base_url="http://ferlab.lan")
    assert allowed.post("/v1/predict", files={"file": ("a.jpg", face, "image/jpeg")},
                        headers={"origin": "https://app.example"}).status_code == 200
    csp = c.get("/").headers["content-security-policy"]
    assert "frame-ancestors 'none'" in csp


def test_uploads_beyond_the_queue_get_a_503_with_retry_after(crops_predictor, fer_slice, monkeypatch):
    """With every slot taken (max_active uploads in the server), the next upload is refused at once, before
    its body is read, with Retry-After; once the queue drains, uploads are served again."""
    import threading
    from concurrent.futures import ThreadPoolExecutor

    import ferlab.serve.analysis as analysis
    import ferlab.serve.app as app_mod
    real, gate, started = analysis.decode_image, threading.Event(), threading.Semaphore(0)

    def held_decode(*args):
        started.release()
        gate.wait(30)
        return real(*args)

    monkeypatch.setattr(analysis, "decode_image", held_decode)
    face = encode(fer_slice["pixels"][0])
    with TestClient(create_app(crops_predictor, max_active=3), base_url=LOCAL) as c, ThreadPoolExecutor(3) as pool:
        held = [pool.submit(upload, c, face) for _ in range(3)]
        assert started.acquire(timeout=30)  # one decoding, two waiting for it
        queue = c.app.middleware_stack
        while not isinstance(queue, app_mod.UploadLimit):
            queue = queue.app
        end = time.time() + 30
        while queue.active < 3 and time.time() < end:
            time.sleep(0.01)
        r = upload(c, face)
        assert r.status_code == 503 and r.headers["retry-after"] == "5" and "busy" in r.json()["detail"]
        assert c.get("/health").status_code == 200
        gate.set()
        assert [f.result().status_code for f in held] == [200] * 3
        assert upload(c, face).status_code == 200


def test_connections_that_never_finish_are_closed_and_capped(crops_predictor, fer_slice):
    """Half-sent requests (a request line and no end of headers; headers and half a body) are closed after the
    request timeout, connections over the cap are closed as they open (long before that timeout), and meanwhile
    /health and uploads are answered; a kept-alive connection gets a fresh deadline for each request."""
    import socket

    import httpx

    from ferlab.serve.server import bounded_h11
    face = encode(fer_slice["pixels"][0])
    timeout_s, cap, uploads = 4.0, 30, 6  # uploads < the queue's 8: none is answered 503 (and closed) early
    half_headers = b"GET /health HTTP/1.1\r\nHost: 127.0.0.1\r\n"
    half_body = (b"POST /v1/predict HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: multipart/form-data; "
                 b"boundary=x\r\nContent-Length: 100000\r\n\r\n--x\r\n")
    socks = []
    with serving(create_app(crops_predictor), http=bounded_h11(request_timeout_s=timeout_s, max_connections=cap)) \
            as port:
        try:
            def connect(data):
                c = socket.create_connection(("127.0.0.1", port), timeout=5)
                c.sendall(data)
                socks.append(c)
            for i in range(cap):  # the cap's worth, every one held open by the server until its deadline
                connect(half_body if i < uploads else half_headers)
            opened = time.monotonic()
            for _ in range(10):  # ten over the cap
                connect(half_headers)
            over = [c for c in socks[cap:] if not _closed(c, max(0.05, opened + timeout_s / 2 - time.monotonic()))]
            assert not over, f"{len(over)} of the 10 connections over the cap were still open {timeout_s / 2} s on"
            assert time.monotonic() < opened + timeout_s - 0.5  # checked before any deadline could have closed them
            assert not any(_closed(c, 0.01) for c in socks[:cap])  # the half-sent requests: waited for, for now
            still = [i for i, c in enumerate(socks[:cap]) if not _closed(c, max(0.05, opened + timeout_s + 3.0
                                                                                  - time.monotonic()))]
            assert not still, still  # past the deadline: every half-sent request is closed
            with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=10) as client:  # one kept-alive connection
                for _ in range(3):
                    assert client.get("/health").status_code == 200
                    r = client.post("/v1/predict", files={"file": ("a.jpg", face, "image/jpeg")})
                    assert r.status_code == 200, r.text
                    time.sleep(timeout_s * 0.4)  # 3 idle spells > the deadline: each request has its own
        finally:
            for c in socks:
                c.close()


def _closed(sock, wait_s: float) -> bool:
    """The server closed `sock` (EOF or reset) within `wait_s`, after whatever it answered (a 503 when the
    upload queue is full)."""
    import socket
    sock.settimeout(wait_s)
    try:
        while sock.recv(65536):
            pass
        return True
    except ConnectionResetError:
        return True
    except socket.timeout:
        return False


def test_a_dollar_in_a_video_name_is_text_not_mathtext(haar_client, astronaut_video):
    """The upload's name is the timeline's title: `$\\frac{$.mp4` is drawn as written, never parsed as a formula
    (which failed the request with a 500)."""
    r = upload_video(haar_client, astronaut_video.read_bytes(), name="$\\frac{$.mp4", every=4)
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["filename"] == "$\\frac{$.mp4" and body["frames_analysed"] == 2
    plot = np.asarray(Image.open(io.BytesIO(base64.b64decode(body["timeline_png"].split(",", 1)[1]))).convert("RGB"))
    assert plot.shape[1] > 500 and plot.std() > 20


def test_no_two_serve_modules_import_each_other():
    """serve's modules import one way (analysis <- worker <- app), lazy imports inside functions included: the
    inference worker runs `analysis` functions and never needs the web app's module."""
    import ast
    from pathlib import Path

    import ferlab.serve
    package = Path(ferlab.serve.__file__).parent
    imports = {}
    for path in package.glob("*.py"):
        found = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.level == 1:
                found |= {node.module} if node.module else {a.name for a in node.names}
        imports[path.stem] = found & {p.stem for p in package.glob("*.py")}
    assert "app" not in imports["worker"] and "app" not in imports["analysis"], imports
    pairs = {(a, b) for a, bs in imports.items() for b in bs if a in imports.get(b, ())}
    assert not pairs, f"modules importing each other: {sorted(pairs)}"


# ---- live mode: the /v1/live WebSocket ------------------------------------------------------------------------

LIVE = "ws://127.0.0.1/v1/live"  # TestClient sends this Host on the handshake (a relative URL would be 'testserver')


def test_live_frames_get_the_faces_a_photo_upload_gets(haar_client, photo):
    """A real face as live frames: each frame answered in order with the faces /v1/predict finds in the same
    picture (the same Predictor, the same checks), the face followed from frame to frame (one track)."""
    want = upload(haar_client, photo).json()
    with haar_client.websocket_connect(LIVE) as ws:
        ready = ws.receive_json()
        answers = []
        for _ in range(3):
            ws.send_bytes(photo)
            answers.append(ws.receive_json())
    assert ready == {"type": "ready", "max_side": 320, "max_bytes": 2**20, "max_fps": 30.0, "idle_s": 30.0,
                     "session_s": 600.0}
    assert [a["type"] for a in answers] == ["faces"] * 3 and [a["frame"] for a in answers] == [0, 1, 2]
    [face_want] = want["faces"]
    for a in answers:
        assert (a["width"], a["height"]) == (512, 512) and a["elapsed_ms"] > 0
        [face] = a["faces"]
        x, y, w, h = face["box"]
        assert x <= ASTRONAUT_NOSE[0] <= x + w and y <= ASTRONAUT_NOSE[1] <= y + h, face["box"]
        assert face["box"] == face_want["box"] and face["label"] == face_want["label"]
        assert face["probs"] == pytest.approx(face_want["probs"], abs=1e-6)
        assert face["track"] == 1 and face["source"].startswith("live-")
    assert [a["faces"][0]["frame"] for a in answers] == [0, 1, 2]


def _closed_with(ws) -> tuple[dict, dict]:
    """The error message a session sends before it is closed, and the close itself."""
    message = ws.receive_json()
    return message, ws.receive()


def test_live_sessions_are_refused_and_closed_with_a_clear_reason(checkpoint):
    """Another site's page gets no handshake (403); a session past the cap is closed at once with 1013; a bad frame
    is an error message and the session goes on (not a picture: 415; too many pixels: 413); an oversized message
    closes it with 1009, a text message with 1003, silence with 1000 after idle_s; each with the reason, in full in
    an error message first."""
    from starlette.testclient import WebSocketDenialResponse

    from ferlab.serve.live import LiveLimits
    app = create_app(Predictor(str(checkpoint), detector="haar"), live=LiveLimits(max_bytes=60_000, idle_s=0.5))
    c = TestClient(app, base_url=LOCAL)
    with pytest.raises(WebSocketDenialResponse) as denied:
        with c.websocket_connect(LIVE, headers={"origin": "http://evil.example"}):
            pass
    assert denied.value.status_code == 403 and "evil.example" in denied.value.json()["detail"]
    with pytest.raises(WebSocketDenialResponse) as denied:
        with c.websocket_connect("ws://evil.example/v1/live"):  # a DNS-rebinding name
            pass
    assert denied.value.status_code == 403

    small = encode(astronaut()[::2, ::2], quality=80)  # 256x256, a face, under the 60 KB limit
    with c.websocket_connect(LIVE, headers={"origin": "http://127.0.0.1"}) as ws:  # the server's own page
        assert ws.receive_json()["type"] == "ready"
        ws.send_bytes(b"these bytes are not a picture")
        bad = ws.receive_json()
        assert bad["type"] == "error" and bad["frame"] == 0 and bad["status"] == 415, bad
        assert "not a supported image" in bad["detail"]
        ws.send_bytes(encode(Image.new("L", (2000, 1200)), "PNG"))  # 2.4 MP: over the live frame limit
        bad = ws.receive_json()
        assert (bad["frame"], bad["status"]) == (1, 413) and "2,400,000" in bad["detail"], bad
        ws.send_bytes(small)
        good = ws.receive_json()
        assert good["type"] == "faces" and good["frame"] == 2 and len(good["faces"]) == 1, good

        with c.websocket_connect(LIVE) as other:  # past the cap of one session
            message, close = _closed_with(other)
        assert "busy" in message["detail"] and "--live-sessions" in message["detail"]
        assert close["code"] == 1013 and "busy" in close["reason"]

        ws.send_bytes(small[:3] + bytes(60_001))
        message, close = _closed_with(ws)
        assert "60,004 bytes" in message["detail"] and "60,000" in message["detail"], message
        assert close["code"] == 1009 and "60,000" in close["reason"]

    with c.websocket_connect(LIVE) as ws:  # the slot is free again
        assert ws.receive_json()["type"] == "ready"
        ws.send_text("hello")
        message, close = _closed_with(ws)
        assert "binary" in message["detail"] and close["code"] == 1003

    with c.websocket_connect(LIVE) as ws:
        assert ws.receive_json()["type"] == "ready"
        t0 = time.monotonic()
        message, close = _closed_with(ws)
        assert time.monotonic() - t0 >= 0.45 and "no frame came for 0.5 s" in message["detail"]
        assert close["code"] == 1000
    assert app.state.live.active == 0


def test_live_sessions_get_their_frame_rate_and_time_and_no_more(checkpoint):
    """A client that sends without waiting for answers is analysed at max_fps, and a session ends after
    session_s (1000, and why)."""
    from ferlab.serve.live import LiveLimits
    c = TestClient(create_app(Predictor(str(checkpoint), detector="haar"),
                              live=LiveLimits(max_fps=10, session_s=1.0)), base_url=LOCAL)
    frame = encode(np.full((120, 160, 3), 128, np.uint8))
    with c.websocket_connect(LIVE) as ws:
        assert ws.receive_json()["type"] == "ready"
        t0 = time.monotonic()
        for _ in range(30):
            ws.send_bytes(frame)  # all at once
        answers = []
        while (message := ws.receive_json())["type"] == "faces":
            answers.append((time.monotonic() - t0, message["frame"]))
        close = ws.receive()
    assert "lasts 1 s at most" in message["detail"] and close["code"] == 1000
    assert 5 <= len(answers) <= 11, answers  # 10 a second for 1 s (and the one at 0 s)
    # answer i's analysis starts no sooner than i / max_fps after the first one's, which started after t0: a bound
    # a loaded machine cannot break (the gaps between receipts can, when one analysis takes longer than the next)
    assert all(t >= i / 10 for i, (t, _) in enumerate(answers)), answers


def test_live_sessions_outlast_the_request_deadline_and_oversized_messages_are_not_read(crops_predictor, fer_slice):
    """Under `ferlab serve`'s uvicorn settings (wsproto, the bounded h11 protocol): a live session goes on past the
    request deadline that cuts half-sent HTTP requests, and a message over the size limit is cut off by uvicorn
    itself with 1009."""
    import socket

    from wsproto import ConnectionType, WSConnection
    from wsproto.events import AcceptConnection, BytesMessage, CloseConnection, Request, TextMessage

    from ferlab.serve.server import server_settings

    def events(sock, conn, until):
        got = []
        while not any(isinstance(e, until) for e in got):
            data = sock.recv(65536)
            if not data:
                break
            conn.receive_data(data)
            got += list(conn.events())
        return got

    face = encode(fer_slice["pixels"][0])
    settings = server_settings(request_timeout_s=1.0, ws_max_bytes=100_000)
    with serving(create_app(crops_predictor), **settings) as port:
        with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
            conn = WSConnection(ConnectionType.CLIENT)
            sock.sendall(conn.send(Request(host=f"127.0.0.1:{port}", target="/v1/live",
                                           extra_headers=[(b"origin", f"http://127.0.0.1:{port}".encode())])))
            got = events(sock, conn, TextMessage)
            assert isinstance(got[0], AcceptConnection) and '"ready"' in got[-1].data
            time.sleep(1.5)  # past the 1 s request deadline
            sock.sendall(conn.send(BytesMessage(data=face)))
            [answer] = [e for e in events(sock, conn, TextMessage) if isinstance(e, TextMessage)]
            assert '"type": "faces"' in answer.data and '"frame": 0' in answer.data
            sock.sendall(conn.send(BytesMessage(data=bytes(100_001))))
            [close] = [e for e in events(sock, conn, CloseConnection) if isinstance(e, CloseConnection)]
            assert close.code == 1009 and "100000" in close.reason
