"""The Python API as people use it, on a real photo (scikit-image's astronaut) and the packaged model: `ferlab`'s
public names, `Predictor.predict` on encoded image bytes, each face's five landmarks (Python, `ferlab predict`'s
JSON and CSV, the REST answer), and `ferlab.draw`."""
from __future__ import annotations

import csv
import io
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from skimage import data as skdata

import ferlab
from ferlab.cli import main

ASTRONAUT_NOSE = (222, 118)  # read off the 512x512 photo: Eileen Collins' nose (as test_serve has it)
MARKS = ["left_eye", "right_eye", "nose", "mouth_left", "mouth_right"]


def encode(rgb: np.ndarray, fmt: str = "PNG", **kw) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(rgb).save(buf, fmt, **kw)
    return buf.getvalue()


@pytest.fixture(scope="module")
def astronaut() -> np.ndarray:
    return skdata.astronaut()


@pytest.fixture(scope="module")
def predictor():
    return ferlab.Predictor()  # the packaged model, MTCNN


@pytest.fixture(scope="module")
def faces(predictor, astronaut):
    return predictor.predict(astronaut)


def test_public_names_all_import_and_import_ferlab_stays_light():
    code = ("import sys, ferlab; assert 'torch' not in sys.modules and 'cv2' not in sys.modules; "
            "from ferlab import *; import ferlab as f; "
            "print(sorted(n for n in f.__all__ if getattr(f, n) is not None and n in dir(f)))")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == str(sorted(ferlab.__all__))
    assert {"Predictor", "draw", "load_fer2013", "fit", "load_config", "CLASSES"} <= set(ferlab.__all__)
    assert ferlab.draw.__doc__ and ferlab.Predictor.predict.__doc__
    with pytest.raises(AttributeError, match="has no attribute 'Predicter'; its public names are CLASSES, Predictor"):
        ferlab.Predicter


def test_the_package_says_it_is_typed():
    assert (Path(ferlab.__file__).parent / "py.typed").is_file()  # shipped: test_packaging's wheel test


def test_predict_on_encoded_bytes_equals_predict_on_the_array(predictor, astronaut, faces):
    png = encode(astronaut)
    assert len(faces) == 1
    for given in (png, bytearray(png), memoryview(png)):
        (f,) = predictor.predict(given)
        assert (f["box"], f["label"], f["landmarks"]) == (faces[0]["box"], faces[0]["label"], faces[0]["landmarks"])
        np.testing.assert_allclose(list(f["probs"].values()), list(faces[0]["probs"].values()), atol=1e-6)
    # JPEG too (lossy: the same face, about the same place), in a list with the array, one answer per item
    by_jpeg, by_array = predictor.predict([encode(astronaut, "JPEG", quality=95), astronaut])
    # the array rides in a batch of two faces here: same face, label and box; probabilities to float rounding
    assert len(by_jpeg) == 1 and len(by_array) == 1
    assert {k: v for k, v in by_array[0].items() if k != "probs"} == {k: v for k, v in faces[0].items() if k != "probs"}
    np.testing.assert_allclose(list(by_array[0]["probs"].values()), list(faces[0]["probs"].values()), atol=1e-6)
    assert np.abs(np.subtract(by_jpeg[0]["box"], faces[0]["box"])).max() <= 4
    assert predictor.top_emotion(png) == (faces[0]["label"], faces[0]["probs"][faces[0]["label"]])


@pytest.mark.parametrize("bad, said", [
    (b"not an image at all", ": cannot decode as an image (UnidentifiedImageError"),
    (b"", ": empty; expected the bytes of an encoded image (PNG, JPEG"),
    (None, "expected the bytes of an encoded image (PNG, JPEG, WebP, BMP, GIF or TIFF), got bytes starting"),
])
def test_bytes_that_are_no_image_are_a_value_error_that_says_what_was_expected(predictor, astronaut, bad, said):
    if bad is None:
        bad = encode(astronaut)[:400]  # a PNG cut short: its header reads, its pixels do not
    with pytest.raises(ValueError) as e:
        predictor.predict(bad)
    assert str(e.value).startswith("image bytes: ") and said in str(e.value)
    errors: list = []  # stream with an errors list: the bad item is reported in its place, the others answered
    got = [(fr.item, fr.error is not None, len(f)) for fr, f in predictor.stream([bad, astronaut], errors=errors)]
    assert got == [(0, True, 0), (1, False, 1)] and len(errors) == 1
    assert errors[0][1].startswith("image bytes (item 0): ") and said in errors[0][1]


def test_landmarks_lie_in_the_box_in_their_places(faces, predictor, astronaut):
    (f,) = faces
    x, y, w, h = f["box"]
    assert list(f["landmarks"]) == MARKS
    for name, (px, py) in f["landmarks"].items():
        assert x <= px <= x + w and y <= py <= y + h, name
    m = f["landmarks"]
    assert m["left_eye"][0] < m["right_eye"][0] and m["mouth_left"][0] < m["mouth_right"][0]
    assert max(m["left_eye"][1], m["right_eye"][1]) < m["nose"][1] < min(m["mouth_left"][1], m["mouth_right"][1])
    assert np.hypot(*np.subtract(m["nose"], ASTRONAUT_NOSE)) < 12
    # a detector without landmarks: None, the rest of the face as before
    (haar,) = ferlab.Predictor(detector="haar").predict(astronaut)
    assert haar["landmarks"] is None and haar["label"] in predictor.classes


def test_landmarks_in_json_and_csv_rows(faces, astronaut, tmp_path, capsys):
    photo = tmp_path / "astronaut.png"
    Image.fromarray(astronaut).save(photo)
    assert main(["predict", str(photo), "--format", "json"]) == 0
    (row,) = json.loads(capsys.readouterr().out)
    np.testing.assert_allclose(np.array(list(row["landmarks"].values())),
                               np.array(list(faces[0]["landmarks"].values())), atol=0.01)
    assert main(["predict", str(photo), "--format", "csv"]) == 0
    header, *rows = list(csv.reader(io.StringIO(capsys.readouterr().out)))
    old = ["source", "frame", "time_s", "track", "x", "y", "w", "h", "score", "label", *ferlab.CLASSES, "error"]
    assert header == old + [f"{n}_{xy}" for n in MARKS for xy in "xy"]  # the columns it had, then the landmarks
    (cells,) = rows
    assert [float(v) for v in cells[len(old):]] == pytest.approx(
        [v for n in MARKS for v in row["landmarks"][n]], abs=0.01)


def test_landmarks_in_the_rest_answer(predictor, astronaut, faces):
    pytest.importorskip("fastapi")
    from fastapi.testclient import TestClient

    from ferlab.serve.app import create_app
    client = TestClient(create_app(predictor), base_url="http://127.0.0.1")
    r = client.post("/v1/predict", files={"file": ("a.png", encode(astronaut), "image/png")})
    assert r.status_code == 200, r.text
    (face,) = r.json()["faces"]
    assert face["landmarks"] == faces[0]["landmarks"]


def test_draw_returns_a_new_picture_drawn_only_about_the_boxes(astronaut, faces):
    before = astronaut.copy()
    out = ferlab.draw(astronaut, faces)
    assert out is not astronaut and out.shape == astronaut.shape and out.dtype == np.uint8
    np.testing.assert_array_equal(astronaut, before)  # the input is left as it was
    changed = (out != astronaut).any(-1)
    (x, y, w, h) = faces[0]["box"]
    band = max(4, w // 10)
    assert changed[y:y + h, x:x + w].any()  # the box's edges
    assert not changed[y + band:y + h - band, x + band:x + w - band].any()  # the face inside it untouched
    rows, cols = np.nonzero(changed)
    assert rows.min() >= y - 60 and rows.max() <= y + h + band and cols.min() >= x - band  # the label sits on it
    # OpenCV's order in, the same order out; gray in, RGB out; landmarks on request
    bgr = np.ascontiguousarray(astronaut[..., ::-1])
    np.testing.assert_array_equal(ferlab.draw(bgr, faces, color="bgr"), out[..., ::-1])
    gray = np.asarray(Image.fromarray(astronaut).convert("L"))
    assert ferlab.draw(gray, faces).shape == astronaut.shape
    marked = ferlab.draw(astronaut, faces, landmarks=True)
    for px, py in faces[0]["landmarks"].values():
        assert (marked[round(py), round(px)] != out[round(py), round(px)]).any()
    with pytest.raises(ValueError, match=r"expected a uint8 picture of shape \(H, W\), \(H, W, 3\) or \(H, W, 4\), "
                                         r"got float64 \(512, 512, 3\)"):
        ferlab.draw(astronaut / 255.0, faces)
