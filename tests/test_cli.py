"""The command's conventions, on inputs that need no dataset (scikit-image's astronaut photo, the packaged model):
`ferlab demo`, predict --format json, did-you-mean for verbs and model names, a port already in use, every verb's
examples, an empty input folder, and no OpenCV/FFmpeg log lines."""
from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest
from PIL import Image
from skimage import data as skdata

import ferlab.serve.app
from ferlab.cli import build_parser, main
from ferlab.data import CLASSES


@pytest.fixture(scope="module")
def astronaut(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("photos") / "astronaut.png"
    Image.fromarray(skdata.astronaut()).save(path)
    return path


def test_demo_predicts_and_explains_the_astronaut(tmp_path, capsys):
    out = tmp_path / "demo"
    assert main(["demo", "--out", str(out)]) == 0
    stdout, err = capsys.readouterr()
    table = stdout.splitlines()
    assert table[0].split()[:9] == ["frame", "time_s", "track", "x", "y", "w", "h", "score", "label"]
    assert set(table[1]) == {"-", " "} and len(table) == 3  # header, rule, one face
    face = table[2].split()
    assert face[5] in CLASSES and face[-1] == str(out / "astronaut.png")
    x, y, w, h = map(int, face[:4])
    assert x < 225 < x + w and y < 115 < y + h  # around the astronaut's face
    for name in ("astronaut.png", "astronaut_annotated.png", "astronaut_explained.png"):
        with Image.open(out / name) as im:
            assert im.size == (512, 512)
    drawn = np.asarray(Image.open(out / "astronaut_annotated.png").convert("RGB"))
    assert not np.array_equal(drawn, skdata.astronaut())  # the box and label are on it
    assert "1 face(s)" in err and "Traceback" not in err
    # run again into the same folder: its own files replaced, no astronaut_annotated-2.png beside them
    assert main(["demo", "--out", str(out)]) == 0
    assert sorted(p.name for p in out.iterdir()) == ["astronaut.png", "astronaut_annotated.png",
                                                     "astronaut_explained.png"]


def test_predict_format_json_is_one_list_of_the_jsonl_rows(astronaut, tmp_path, capsys):
    broken = tmp_path / "broken.jpg"
    broken.write_bytes(b"not an image")
    args = ["predict", str(astronaut), str(broken), "--no-progress", "--no-tta"]
    assert main(args + ["--format", "jsonl"]) == 2  # an unreadable input: exit 2, its row among the others
    lines = [json.loads(ln) for ln in capsys.readouterr().out.splitlines()]
    assert main(args + ["--format", "json"]) == 2
    doc = json.loads(capsys.readouterr().out)  # the whole output is one document
    assert isinstance(doc, list) and doc == lines and len(doc) == 2
    assert doc[0]["label"] in CLASSES and doc[1]["error"].startswith(str(broken))


def test_mistyped_verb_gets_the_nearest_and_the_list(capsys):
    assert main(["predcit", "photo.jpg"]) == 2
    err = capsys.readouterr().err
    verbs = list(build_parser().verbs)
    assert err == f"ferlab: error: unknown command 'predcit'; did you mean 'predict'? Commands: {', '.join(verbs)}\n"
    assert main(["zzz"]) == 2
    assert capsys.readouterr().err.startswith("ferlab: error: unknown command 'zzz'. Commands: demo, data, ")


def test_mistyped_model_name_gets_the_nearest(astronaut, tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)  # no file named defualt here
    assert main(["predict", str(astronaut), "--model", "defualt", "--no-progress"]) == 2
    out, err = capsys.readouterr()
    assert out == "" and len(err.splitlines()) == 1
    assert err.startswith("ferlab predict: error: unknown model 'defualt'; did you mean 'default'?")
    (tmp_path / "defualt").mkdir()  # an existing path is taken as one: its own error, no guessing
    assert main(["predict", str(astronaut), "--model", "defualt", "--no-progress"]) == 2
    assert "did you mean" not in capsys.readouterr().err


def test_serve_on_a_port_in_use_says_so_before_loading_the_model(capsys, monkeypatch):
    def no_model(**_):
        raise AssertionError("the model was loaded")
    monkeypatch.setattr(ferlab.serve.app, "create_app", no_model)
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        assert main(["serve", "--port", str(port)]) == 2
    err = capsys.readouterr().err
    assert err == (f"ferlab serve: error: 127.0.0.1:{port} is already in use (another server is listening there); "
                   "stop it or pass another --port\n")


def test_every_verb_has_a_description_and_examples():
    parser = build_parser()
    assert len(parser.verbs) >= 12
    for verb, sub in parser.verbs.items():
        text = sub.format_help()
        assert sub.description and sub.description in text, verb
        examples = text.split("Examples:\n", 1)[1].splitlines()
        assert sum(ln.startswith(f"  ferlab {verb}") for ln in examples) >= 2, verb


def test_empty_input_folder_is_an_error_row_of_its_own(astronaut, tmp_path, capsys):
    empty = tmp_path / "empty"
    (empty / "sub").mkdir(parents=True)
    (empty / "notes.txt").write_text("no pictures here")
    assert main(["predict", str(empty), str(astronaut), "--no-progress", "--no-tta"]) == 2
    out, err = capsys.readouterr()
    rows = [json.loads(ln) for ln in out.splitlines()]
    assert [r["source"] for r in rows] == [str(empty), str(astronaut)]
    assert rows[0]["error"].startswith(f"{empty}: a folder without images or videos") and rows[1]["label"]
    assert "1 of the inputs could not be read" in err
    assert main(["predict", str(empty), "--no-progress", "--keep-going"]) == 0


def _damaged_videos(folder: Path) -> list[Path]:
    """A random-bytes .mp4 and a real MP4 whose frame headers are overwritten with zeros."""
    ok = folder / "ok.mp4"
    w = cv2.VideoWriter(str(ok), cv2.VideoWriter_fourcc(*"mp4v"), 10, (64, 64))
    for i in range(30):
        w.write(np.full((64, 64, 3), i * 8, np.uint8))
    w.release()
    raw = ok.read_bytes()
    damaged, noise = folder / "damaged.mp4", folder / "noise.mp4"
    damaged.write_bytes(raw[:48] + bytes(200) + raw[248:])
    noise.write_bytes(np.random.default_rng(0).integers(0, 256, 20000, dtype=np.uint8).tobytes())
    return [damaged, noise]


def test_opencv_and_ffmpeg_log_lines_never_reach_the_user(tmp_path):
    videos = _damaged_videos(tmp_path)
    env = {k: v for k, v in os.environ.items() if not k.startswith("OPENCV_")}  # as a user's shell has it
    env["PYTHONPATH"] = str(Path(__file__).resolve().parents[1] / "src")
    proc = subprocess.run([sys.executable, "-m", "ferlab", "predict", *map(str, videos), "--detector", "none",
                           "--no-progress", "--format", "table"], env=env, capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 2
    assert "UNREADABLE" in proc.stdout and "2 input(s) unreadable" in proc.stderr
    noise = [ln for ln in proc.stderr.splitlines() if ln.startswith("[")]  # "[ WARN:0@..." or "[mpeg4 @ 0x...]"
    assert noise == [], noise
