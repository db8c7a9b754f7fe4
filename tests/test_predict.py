"""Predict on real inputs: FER2013 face crops, a photo with a face, folders, a video, no-face and broken files."""
from __future__ import annotations

import csv
import io
import json
import logging
import re
import subprocess
import sys
import warnings
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
from PIL import Image
from skimage import data as skdata

import ferlab
from ferlab.cli import main
from ferlab.engine import TrainConfig, load_checkpoint, model_from_checkpoint, save_checkpoint, train_one_epoch
from ferlab.engine.trainer import build_preprocess, make_optimizer, make_scheduler
from ferlab.inference.detect import detect_many, group_windows, make_detector
from ferlab.inference.faces import image_to_input, square_box, to_gray
from ferlab.inference.preprocess import to_model_input
from ferlab.models import create_model

ASTRONAUT_FACE_CENTRE = (225, 115)  # x, y of the face's middle in skimage.data.astronaut() (512 x 512)


def tiny_checkpoint(path: Path, fer_slice) -> Path:
    """A real checkpoint: vgg_s after one epoch of the training loop on the slice's Training faces."""
    cfg = TrainConfig(model="vgg_s", batch_size=32, lr=0.05, device="cpu")
    pre = build_preprocess(cfg)
    torch.manual_seed(0)
    model = create_model("vgg_s", in_channels=pre.in_channels, input_size=pre.input_size)
    train = np.array(fer_slice["usage"]) == "Training"
    images, labels = torch.from_numpy(fer_slice["pixels"][train]), torch.from_numpy(fer_slice["labels"][train])
    optimizer = make_optimizer(cfg, model)
    scheduler = make_scheduler(cfg, optimizer, len(labels) // cfg.batch_size)
    train_one_epoch(model, images, labels, pre, optimizer, scheduler, cfg, 1, torch.device("cpu"), progress=False)
    path.parent.mkdir(parents=True, exist_ok=True)
    save_checkpoint(path, model=model, model_name="vgg_s", model_args={}, pre=pre, config=cfg.to_dict(),
                    epoch=1, best_val_acc=0.0)
    return path


@pytest.fixture(scope="module")
def run_dir(fer_slice, tmp_path_factory) -> Path:
    """A run folder holding best.pt, as training leaves it."""
    return tiny_checkpoint(tmp_path_factory.mktemp("runs") / "tiny" / "best.pt", fer_slice).parent


@pytest.fixture(scope="module")
def predictor(run_dir):
    return ferlab.Predictor(run_dir, detector="none", batch_size=16)


@pytest.fixture(scope="module")
def astronaut():
    return skdata.astronaut()


def _forward(run_dir, pixels: np.ndarray, tta: bool = True) -> np.ndarray:
    """The checkpoint's probabilities, averaged with the mirror image's (flip TTA, the Predictor's default)."""
    model, pre = model_from_checkpoint(load_checkpoint(run_dir))
    x = to_model_input(pixels, pre)
    with torch.no_grad():
        probs = model(x).softmax(1)
        return ((probs + model(x.flip(-1)).softmax(1)) / 2 if tta else probs).numpy()


@pytest.mark.parametrize("detector", ["mtcnn", "haar"])
def test_detect_many_greys_a_colour_picture_only_for_detectors_that_read_grey(astronaut, detector):
    """MTCNN reads the colour picture as it is (no whole-picture grey copy: photos and a video's full detections
    share this path); a cascade gets the grey copy. The faces are those of one call on the picture."""
    det = make_detector(detector)
    grey = to_gray(astronaut)
    (copy,), (faces,) = detect_many(det, [astronaut])
    assert (copy is None) == (detector == "mtcnn")
    if copy is not None:
        np.testing.assert_array_equal(copy, grey)
    assert [f.box for f in faces] == [f.box for f in det(grey, astronaut)] and len(faces) == 1
    (copy,), _ = detect_many(det, [grey])  # a grey picture is its own grey copy
    np.testing.assert_array_equal(copy, grey)


@pytest.fixture(scope="module")
def faces_dir(fer_slice, tmp_path_factory) -> tuple[Path, list[str], np.ndarray]:
    """Three real FER2013 faces per class, as JPEGs from the archive in nested class folders."""
    root = tmp_path_factory.mktemp("faces")
    pick = np.concatenate([np.flatnonzero(fer_slice["labels"] == k)[:3] for k in range(7)])
    names = [fer_slice["names"][i] for i in pick]
    for i, name in zip(pick, names):
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_bytes(fer_slice["jpeg"][i])
    return root, names, fer_slice["pixels"][pick]


def test_face_crops_match_a_direct_forward(predictor, run_dir, faces_dir):
    root, names, pixels = faces_dir
    res = predictor.predict(root)
    assert len(res) == len(names)  # every face in the nested class folders
    by_name = {"/".join(Path(r["source"]).parts[-3:]): r for r in res}
    want = _forward(run_dir, pixels)
    got = np.array([[by_name[n]["probs"][c] for c in predictor.classes] for n in names])
    np.testing.assert_allclose(got, want, atol=1e-5)
    for n in names:
        r = by_name[n]
        assert r["box"] == [0, 0, 48, 48] and r["score"] == 1.0 and r["frame"] is None and r["time_s"] is None
        assert r["label"] == max(r["probs"], key=r["probs"].get)
    assert len(set(np.argmax(want, 1))) > 1, "a trained model should not predict one class for every face"
    single = ferlab.Predictor(run_dir, detector="none", tta=False).predict_crops(list(pixels))
    np.testing.assert_allclose(single, _forward(run_dir, pixels, tta=False), atol=1e-5)
    assert not np.allclose(single, got, atol=1e-4)  # the mirror image's vote counts


def test_contract_and_image_inputs(predictor, fer_slice):
    face = fer_slice["pixels"][0]
    (gray,) = predictor.predict(face)
    assert set(gray) == {"source", "frame", "time_s", "track", "box", "score", "landmarks", "label", "probs"}
    assert gray["source"] is None and list(gray["probs"]) == list(predictor.classes)
    assert gray["landmarks"] is None  # detector "none" finds no landmarks (MTCNN's faces: tests/test_api.py)
    assert abs(sum(gray["probs"].values()) - 1) < 1e-5
    rgb = np.repeat(face[..., None], 3, -1)
    for same in (rgb, Image.fromarray(face), Image.fromarray(rgb)):
        (r,) = predictor.predict(same)
        assert r["probs"] == pytest.approx(gray["probs"], abs=1e-6)
    assert predictor.preprocess.input_size == 48 and predictor.classes[3] == "happy"


@pytest.mark.parametrize("detector", ["mtcnn", "haar", "lbp"])
def test_astronaut_photo_yields_one_face_on_the_face(run_dir, astronaut, detector):
    pred = ferlab.Predictor(run_dir, detector=detector)
    res = pred.predict(astronaut)
    assert len(res) == 1, [r["box"] for r in res]
    x, y, w, h = res[0]["box"]
    assert w == h and 70 <= w <= 140
    cx, cy = x + w / 2, y + h / 2
    assert abs(cx - ASTRONAUT_FACE_CENTRE[0]) < 20 and abs(cy - ASTRONAUT_FACE_CENTRE[1]) < 20
    # a 0-1 confidence from every detector: MTCNN's probability, a cascade's votes past its threshold
    assert 0.99 <= res[0]["score"] <= 1.0 if detector == "mtcnn" else 0.5 <= res[0]["score"] < 1.0
    # the shared path: the reported probabilities are the model's on that crop (turned upright by the eyes
    # where the detector gives landmarks, as by default) and its mirror, through the one preprocess
    (face,) = pred.detector(to_gray(astronaut), astronaut)
    assert (face.landmarks is not None) == (detector == "mtcnn") and pred.align
    model, pre = model_from_checkpoint(load_checkpoint(run_dir))
    with torch.no_grad():
        x = image_to_input(astronaut, [face], pre, align=True)
        p = ((model(x).softmax(1) + model(x.flip(-1)).softmax(1)) / 2)[0]
    assert [res[0]["probs"][c] for c in pred.classes] == pytest.approx(p.tolist(), abs=1e-6)


def test_haar_detector_without_opencv_cascades_says_what_to_do(monkeypatch, astronaut):
    monkeypatch.delattr(cv2, "CascadeClassifier")
    with pytest.raises(RuntimeError, match="opencv-python-headless<5.*detector='lbp'"):
        make_detector("haar")
    assert make_detector("lbp")(astronaut[..., 0], astronaut)  # the fallback still finds her


def test_square_box_stays_inside_the_image():
    assert square_box((10, 20, 30, 40), 0.0, 100, 100) == (5, 20, 40, 40)
    assert square_box((90, 90, 20, 20), 0.5, 100, 100) == (60, 60, 40, 40)  # pushed back inside
    assert square_box((0, 0, 300, 200), 0.0, 120, 80) == (40, 0, 80, 80)


def test_group_windows_counts_agreeing_windows_and_drops_nested_ones():
    rng = np.random.default_rng(0)
    face = np.array([100, 100, 60, 60]) + rng.integers(-3, 4, (6, 4))
    eye = np.array([[110, 110, 20, 20], [111, 110, 20, 20], [110, 111, 21, 21], [112, 111, 20, 20]])
    stray = np.array([[300, 40, 30, 30], [302, 41, 30, 30]])
    (box, votes), = group_windows(np.concatenate([face, eye, stray]).astype(float), min_votes=3)
    assert votes == 6 and np.allclose(box, face.mean(0))
    assert len(group_windows(np.concatenate([face, eye, stray]).astype(float), min_votes=2)) == 2  # + stray
    assert group_windows(np.empty((0, 4)), 1) == []


def test_no_face_gives_empty_result_and_message(run_dir, caplog, tmp_path, capsys):
    pred = ferlab.Predictor(run_dir)
    blank = np.full((240, 320, 3), 200, np.uint8)
    with caplog.at_level(logging.WARNING), warnings.catch_warnings():
        warnings.simplefilter("error")  # no face is a normal outcome: no warning, no log line
        assert pred.predict(blank) == []
    assert caplog.text == ""
    Image.fromarray(blank).save(tmp_path / "blank.png")
    assert main(["predict", str(tmp_path / "blank.png"), "--model", str(run_dir), "--no-progress"]) == 0
    out, err = capsys.readouterr()
    (row,) = [json.loads(line) for line in out.splitlines()]  # the faceless input still gets its row
    assert row["source"] == str(tmp_path / "blank.png") and row["label"] is None and row["box"] is None
    assert "0 face(s) in 1 image(s)/frame(s); 1 without a face" in err


def _video(path: Path, image: np.ndarray, n: int, fps: float, dx: int) -> None:
    h, w = image.shape[:2]
    vw = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"mp4v"), fps, (w, h))
    assert vw.isOpened()
    for i in range(n):
        vw.write(cv2.cvtColor(np.roll(image, dx * i, axis=1), cv2.COLOR_RGB2BGR))
    vw.release()


@pytest.fixture(scope="module")
def video(astronaut, tmp_path_factory) -> Path:
    """6 frames at 5 fps: the astronaut (at 256 px) moving right by 6 px a frame."""
    small = np.asarray(Image.fromarray(astronaut).resize((256, 256), Image.BILINEAR))
    path = tmp_path_factory.mktemp("video") / "astronaut.mp4"
    _video(path, small, n=6, fps=5.0, dx=6)
    return path


def test_video_frames_timestamps_and_every(run_dir, video):
    # batches span frames; every frame detected in full, so that a frame gives the same answer when sampled
    # (followed faces depend on the frames before: tests/test_tracking.py)
    pred = ferlab.Predictor(run_dir, batch_size=4, detect_every=1)
    res = pred.predict(video)
    best = {}
    for r in res:
        if r["frame"] not in best or r["score"] > best[r["frame"]]["score"]:
            best[r["frame"]] = r
    assert sorted(best) == list(range(6))
    for i, r in best.items():
        assert r["source"] == str(video) and r["time_s"] == pytest.approx(i / 5.0)
    xs = [best[i]["box"][0] + best[i]["box"][2] / 2 for i in range(6)]
    assert abs((xs[-1] - xs[0]) / 5 - 6) < 3, xs  # the box follows the face
    sampled = pred.predict(video, every=2)
    assert sorted({r["frame"] for r in sampled}) == [0, 2, 4]
    assert sorted({r["time_s"] for r in sampled}) == pytest.approx([0.0, 0.4, 0.8])
    for r in sampled:  # the same frames give the same answers when sampled
        assert any(r["box"] == q["box"] and r["probs"] == pytest.approx(q["probs"], abs=1e-6) for q in res)


def test_unreadable_file_is_listed_others_still_processed(run_dir, fer_slice, tmp_path, capsys):
    folder = tmp_path / "in"
    (folder / "sub").mkdir(parents=True)
    Image.fromarray(fer_slice["pixels"][0]).save(folder / "a.png")
    Image.fromarray(fer_slice["pixels"][1]).save(folder / "sub" / "b.jpg")
    (folder / "broken.jpg").write_bytes(b"not an image")
    args = ["predict", str(folder), "--model", str(run_dir), "--detector", "none", "--no-progress"]
    assert main(args) == 2
    out, err = capsys.readouterr()
    rows = [json.loads(line) for line in out.splitlines()]
    assert sorted(Path(r["source"]).name for r in rows if r["label"]) == ["a.png", "b.jpg"]
    (bad,) = [r for r in rows if r.get("error")]  # the unreadable input has its row too, with the reason
    assert bad["source"].endswith("broken.jpg") and "cannot read as an image" in bad["error"]
    assert "broken.jpg" in err and "--keep-going" in err
    assert main(args + ["--keep-going"]) == 0
    assert len(capsys.readouterr().out.splitlines()) == 3
    assert main(["predict", str(tmp_path / "missing.png"), "--model", str(run_dir), "--keep-going",
                 "--no-progress"]) == 0
    assert "missing.png" in capsys.readouterr().err


def test_a_jpeg_of_thousands_of_scans_is_one_row_with_its_reason(run_dir, fer_slice, tmp_path, capsys):
    """`ferlab predict` refuses the scan bomb before decoding it (it would take seconds), in its place among the
    inputs; under --keep-going the good inputs keep their rows and the exit is 0."""
    import time

    from test_serve import scan_bomb
    Image.fromarray(fer_slice["pixels"][0]).save(tmp_path / "a.png")
    (tmp_path / "b_bomb.jpg").write_bytes(scan_bomb(3000, 1000))
    Image.fromarray(fer_slice["pixels"][1]).save(tmp_path / "c.png")
    t0 = time.perf_counter()
    assert main(["predict", str(tmp_path), "--model", str(run_dir), "--detector", "none", "--no-progress",
                 "--keep-going"]) == 0
    assert time.perf_counter() - t0 < 5
    rows = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [Path(r["source"]).name for r in rows] == ["a.png", "b_bomb.jpg", "c.png"]
    assert rows[0]["label"] and rows[2]["label"] and "scans, refused before decoding" in rows[1]["error"]


def test_a_video_over_its_timeout_is_stopped_with_its_rows_kept(run_dir, video, fer_slice, tmp_path, capsys):
    """`--timeout`: a video still going after S seconds is stopped there, reported as that file's error, its
    frames so far kept; the next input is analysed and --keep-going exits 0."""
    import cv2
    long = tmp_path / "long.mp4"
    cap = cv2.VideoCapture(str(video))
    frames = []
    while (got := cap.read())[0]:
        frames.append(got[1])
    cap.release()
    vw = cv2.VideoWriter(str(long), cv2.VideoWriter_fourcc(*"mp4v"), 5.0, frames[0].shape[1::-1])
    for i in range(600):  # 600 frames: far more than 0.5 s of analysis
        vw.write(frames[i % len(frames)])
    vw.release()
    Image.fromarray(fer_slice["pixels"][0]).save(tmp_path / "z.png")
    argv = ["predict", str(long), str(tmp_path / "z.png"), "--model", str(run_dir), "--no-progress", "--timeout", "0.5"]
    assert main(argv + ["--keep-going"]) == 0
    rows = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    analysed = [r for r in rows if r["source"] == str(long) and r.get("frame") is not None]
    stopped = [r for r in rows if r.get("error")]
    assert 0 < len({r["frame"] for r in analysed}) < 600
    assert len(stopped) == 1 and "0.5 s, its time budget (--timeout)" in stopped[0]["error"]
    assert rows[-1]["source"] == str(tmp_path / "z.png")
    assert main(argv) == 2  # without --keep-going a stopped video is an error of the run


def test_csv_and_table_formats(run_dir, fer_slice, tmp_path, capsys):
    deep = tmp_path / ("a_folder_with_a_rather_long_name_" * 3) / "and_another_one_below_it"
    deep.mkdir(parents=True)
    for i in range(3):
        Image.fromarray(fer_slice["pixels"][i]).save(deep / f"{i}.png")
    base = ["predict", str(tmp_path), "--model", str(run_dir), "--detector", "none", "--no-progress"]
    assert main(base + ["--format", "csv"]) == 0
    rows = list(csv.DictReader(io.StringIO(capsys.readouterr().out)))
    assert len(rows) == 3 and rows[0]["w"] == "48" and rows[0]["error"] == ""
    assert rows[0]["label"] == max(ferlab.Predictor(run_dir, detector="none").classes, key=lambda c: float(rows[0][c]))
    assert main(base + ["--format", "table"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].split()[:3] == ["frame", "time_s", "track"] and lines[0].split()[-1] == "source"
    assert len(lines) == 2 + 3
    assert sorted(line.split()[-1] for line in lines[2:]) == [str(deep / f"{i}.png") for i in range(3)]  # whole
    assert main(base) == 0  # jsonl: probabilities to 4 decimals
    for row in map(json.loads, capsys.readouterr().out.splitlines()):
        assert all(v == round(v, 4) for v in row["probs"].values()) and sum(row["probs"].values()) == \
            pytest.approx(1, abs=1e-3)


def test_predict_takes_paths_pil_rgb_bgr_and_lists(run_dir, astronaut, tmp_path):
    """One API for every way a picture arrives: the same faces from a path, a PIL image, an RGB array, a
    read-only array and OpenCV's BGR; a list gives one list per item; no warning for any of it."""
    pred = ferlab.Predictor(run_dir)
    path = tmp_path / "astronaut.png"
    Image.fromarray(astronaut).save(path)
    frozen = astronaut.copy()
    frozen.setflags(write=False)
    bgr = cv2.cvtColor(astronaut, cv2.COLOR_RGB2BGR)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        ref = pred.predict(astronaut)
        for other in (pred.predict(str(path)), pred.predict(Image.open(path)), pred.predict(frozen),
                      pred.predict(bgr, color="bgr")):
            assert [(f["box"], f["label"]) for f in other] == [(f["box"], f["label"]) for f in ref]
            assert other[0]["probs"] == pytest.approx(ref[0]["probs"], abs=1e-6)
        blank = np.full((120, 160, 3), 30, np.uint8)
        grouped = pred.predict([astronaut, str(path), blank, Image.fromarray(bgr[..., ::-1])])
        assert [len(g) for g in grouped] == [1, 1, 0, 1]
        assert grouped[0][0]["probs"] == pytest.approx(ref[0]["probs"], abs=1e-6)
        assert pred.top_emotion(astronaut) == (ref[0]["label"], ref[0]["probs"][ref[0]["label"]])
        assert pred.top_emotion(blank) == (None, None)
    with pytest.raises(ValueError, match="color must be 'rgb' or 'bgr'"):
        pred.predict(astronaut, color="hsv")


def test_top_emotion_picks_the_largest_face():
    from ferlab.inference.predictor import top_emotion
    small = {"box": [0, 0, 10, 10], "label": "sad", "probs": {"sad": 0.9, "happy": 0.1}}
    big = {"box": [50, 50, 40, 40], "label": "happy", "probs": {"sad": 0.3, "happy": 0.7}}
    assert top_emotion([small, big]) == ("happy", 0.7) and top_emotion([]) == (None, None)


def test_progress_bar_only_on_a_terminal(run_dir, fer_slice, tmp_path):
    for i in range(3):
        Image.fromarray(fer_slice["pixels"][i]).save(tmp_path / f"{i}.png")
    proc = subprocess.run([sys.executable, "-m", "ferlab.cli", "predict", str(tmp_path), "--model", str(run_dir),
                           "--detector", "none"], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0 and len(proc.stdout.splitlines()) == 3
    assert "\r" not in proc.stderr and "file/s" not in proc.stderr  # piped: no bar


def test_save_writes_annotated_image_and_video(run_dir, astronaut, video, tmp_path, capsys):
    Image.fromarray(astronaut).save(tmp_path / "astronaut.png")
    out = tmp_path / "out"
    assert main(["predict", str(tmp_path / "astronaut.png"), str(video), "--model", str(run_dir), "--every", "3",
                 "--save", str(out), "--no-progress"]) == 0
    capsys.readouterr()
    drawn = np.asarray(Image.open(out / "astronaut.png"))
    assert drawn.shape == astronaut.shape and (drawn != astronaut).any()
    mp4 = out / "astronaut_annotated.mp4"
    cap = cv2.VideoCapture(str(mp4))
    assert cap.isOpened() and int(cap.get(cv2.CAP_PROP_FRAME_COUNT)) == 2  # frames 0 and 3
    cap.release()
    # what browsers play: H.264 in yuv420p, the index (moov) before the data (mdat) so playback starts at once
    import imageio_ffmpeg
    probe = subprocess.run([imageio_ffmpeg.get_ffmpeg_exe(), "-hide_banner", "-i", str(mp4)], capture_output=True,
                           text=True, timeout=60).stderr
    assert re.search(r"Video: h264 .*yuv420p", probe), probe
    raw = mp4.read_bytes()
    assert raw.index(b"moov") < raw.index(b"mdat")

    # the per-video summary: one row per sampled frame, the mean of its faces' probabilities
    rows = list(csv.DictReader(open(out / "astronaut_emotions.csv")))
    classes = ferlab.Predictor(run_dir).classes
    assert [(r["frame"], r["time_s"]) for r in rows] == [("0", "0.000"), ("3", "0.600")]
    for r in rows:
        assert int(r["faces"]) >= 1 and sum(float(r[c]) for c in classes) == pytest.approx(1, abs=1e-3)
    timeline = Image.open(out / "astronaut_timeline.png")
    assert timeline.size[0] > 500 and np.asarray(timeline.convert("L")).std() > 10


def test_video_summary_matches_the_rows(run_dir, video, tmp_path, capsys):
    """The timeline CSV is the per-frame mean of exactly the probabilities printed for that frame's faces."""
    out = tmp_path / "out"
    assert main(["predict", str(video), "--model", str(run_dir), "--save", str(out), "--no-progress"]) == 0
    faces = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    rows = list(csv.DictReader(open(out / "astronaut_emotions.csv")))
    assert len(rows) == 6
    for r in rows:
        mine = [f for f in faces if f["frame"] == int(r["frame"])]
        assert int(r["faces"]) == len(mine)
        for c in mine[0]["probs"]:
            assert float(r[c]) == pytest.approx(np.mean([f["probs"][c] for f in mine]), abs=1e-4)


def test_faces_keep_their_track_id_across_frames(run_dir, video, astronaut):
    res = ferlab.Predictor(run_dir, batch_size=4).predict(video)
    best = {}
    for r in res:
        if r["frame"] not in best or r["score"] > best[r["frame"]]["score"]:
            best[r["frame"]] = r
    assert len(best) == 6 and len({r["track"] for r in best.values()}) == 1  # the moving face: one id
    one, two = ferlab.Predictor(run_dir).predict([video, video])  # ids restart with each video
    assert [r["track"] for r in one] == [r["track"] for r in two] and one
    stills = ferlab.Predictor(run_dir).predict(astronaut)
    assert stills and all(r["track"] is None for r in stills)  # photos have no tracks


def test_iou_tracker_continues_ends_and_starts_tracks():
    from ferlab.inference.video import IoUTracker
    t = IoUTracker(min_iou=0.3, max_missed=2)
    a, b = (10, 10, 50, 50), (200, 40, 60, 60)
    assert t.update([a, b]) == [1, 2]
    assert t.update([(b[0] + 5, *b[1:]), (a[0] + 4, a[1] + 2, 50, 50)]) == [2, 1]  # order does not matter
    assert t.update([(b[0] + 8, *b[1:])]) == [2]     # face 1 unseen for one frame...
    assert t.update([(b[0] + 10, *b[1:]), (a[0] + 6, a[1] + 2, 50, 50)]) == [2, 1]  # ...keeps its id
    for _ in range(3):
        t.update([(b[0] + 10, *b[1:])])             # face 1 unseen longer than max_missed: its track ends
    assert t.update([(a[0] + 6, a[1] + 2, 50, 50)]) == [3]
    assert t.update([(400, 400, 30, 30)]) == [4]   # no overlap with anything: a new track


def test_default_model_missing_names_the_path(monkeypatch, tmp_path):
    import ferlab.weights as weights
    monkeypatch.setattr(weights, "DEFAULT_WEIGHTS", tmp_path / "default.pt")
    with pytest.raises(FileNotFoundError, match=str(tmp_path / "default.pt")):
        ferlab.Predictor("default")
    assert main(["predict", str(tmp_path), "--model", "default"]) == 2


def test_bad_arguments_are_clear(run_dir):
    with pytest.raises(ValueError, match="expected one of mtcnn, haar, lbp, none"):
        ferlab.Predictor(run_dir, detector="yolo")
    with pytest.raises(ValueError, match="every must be >= 1"):
        ferlab.Predictor(run_dir, detector="none").predict(run_dir, every=0)
    with pytest.raises(ValueError, match=r"\(H, W, 3\)"):
        to_gray(np.zeros((4, 4, 5), np.uint8))


def test_import_ferlab_stays_light():
    code = "import sys, ferlab; assert 'torch' not in sys.modules and 'cv2' not in sys.modules; ferlab.Predictor"
    subprocess.run([sys.executable, "-c", code], check=True)


def test_cli_detector_choices_are_the_detectors_and_their_aliases():
    from ferlab.cli import DETECTOR_CHOICES
    from ferlab.inference.detect import _ALIASES, DETECTORS
    assert set(DETECTOR_CHOICES) == set(DETECTORS) | set(_ALIASES)
    assert {make_detector(n).name for n in DETECTOR_CHOICES} == set(DETECTORS)


def test_save_keeps_both_inputs_of_the_same_name(run_dir, fer_slice, tmp_path, capsys):
    """a/face.png and b/face.png given as two inputs: two annotated files (face.png, face-2.png), two reported."""
    from ferlab.inference.output import predict_paths
    inputs = []
    for sub, i in (("a", 0), ("b", 200)):
        (tmp_path / sub).mkdir()
        Image.fromarray(np.kron(fer_slice["pixels"][i], np.ones((4, 4), np.uint8))).save(tmp_path / sub / "face.png")
        inputs.append(str(tmp_path / sub / "face.png"))
    out = tmp_path / "out"
    res = predict_paths(inputs, ferlab.Predictor(run_dir, detector="none"), "jsonl", str(out), 1, progress=False)
    capsys.readouterr()
    assert sorted(p.name for p in out.iterdir()) == ["face-2.png", "face.png"]
    assert res["saved"] == [str(out / "face.png"), str(out / "face-2.png")]
    first, second = (np.asarray(Image.open(p)) for p in res["saved"])
    assert not np.array_equal(first, second)  # each input's own annotated copy, none overwritten


def test_save_never_writes_over_an_input(run_dir, astronaut, video, tmp_path, capsys):
    """`--save` pointed at the inputs' own folder (or at a folder input itself): every file there keeps its
    bytes, inputs or not; the annotated copies take free names (x_annotated.png, then x_annotated-2.png)."""
    import hashlib
    photos = tmp_path / "photos"
    (photos / "sub").mkdir(parents=True)
    Image.fromarray(astronaut).save(photos / "a.png")
    Image.fromarray(astronaut[:, ::-1].copy()).save(photos / "sub" / "b.png")
    Image.fromarray(astronaut[::2, ::2].copy()).save(photos / "a_annotated.png")  # the name a copy would take
    clip = photos / "clip.mp4"
    clip.write_bytes(video.read_bytes())
    Image.fromarray(astronaut).save(photos / "clip_timeline.png")  # a user file named like a summary
    digest = lambda: {p: hashlib.md5(p.read_bytes()).hexdigest() for p in sorted(photos.rglob("*"))
                      if p.is_file()}
    before = digest()
    for argv in ([str(photos / "a.png"), str(clip), "--save", str(photos)],      # files, saved beside themselves
                 [str(photos), "--save", str(tmp_path)],                        # a folder, saved over itself
                 [str(photos / "sub" / "b.png"), str(photos / "a.png"), "--save", str(photos / "sub")]):
        assert main(["predict", *argv, "--model", str(run_dir), "--every", "3", "--no-progress"]) == 0
        capsys.readouterr()
        after = digest()
        assert {p: h for p, h in after.items() if p in before} == before, argv  # no file changed
    assert (photos / "a_annotated-2.png").is_file() and (photos / "clip_annotated.mp4").is_file()
    assert (photos / "clip_emotions.csv").is_file() and (photos / "clip_timeline-2.png").is_file()
    assert (photos / "sub" / "b_annotated.png").is_file()


def _png_claiming(width: int, height: int, real_png: bytes) -> bytes:
    """`real_png` with its IHDR rewritten to claim width x height (CRC fixed): a header-only pixel bomb."""
    import struct
    import zlib
    assert real_png[12:16] == b"IHDR"
    ihdr = b"IHDR" + struct.pack(">II", width, height) + real_png[24:29]
    return real_png[:8] + struct.pack(">I", 13) + ihdr + struct.pack(">I", zlib.crc32(ihdr)) + real_png[33:]


def test_image_over_the_pixel_limit_is_one_unreadable_input(run_dir, fer_slice, tmp_path, capsys):
    """A PNG claiming 20000x20000 pixels among good faces: with --keep-going every good face still gets its row
    and its annotated copy, the bomb is listed as unreadable, and the exit is 0 (2 without --keep-going)."""
    buf = io.BytesIO()
    Image.fromarray(fer_slice["pixels"][0]).save(buf, format="PNG")
    (tmp_path / "a_face.png").write_bytes(buf.getvalue())
    (tmp_path / "b_bomb.png").write_bytes(_png_claiming(20000, 20000, buf.getvalue()))
    Image.fromarray(fer_slice["pixels"][1]).save(tmp_path / "c_face.png")
    inputs = [str(tmp_path / n) for n in ("a_face.png", "b_bomb.png", "c_face.png")]
    out = tmp_path / "out"
    for keep_going, code in ((True, 0), (False, 2)):
        argv = ["predict", *inputs, "--model", str(run_dir), "--detector", "none", "--save", str(out / str(code)),
                "--no-progress"] + (["--keep-going"] if keep_going else [])
        assert main(argv) == code
        stdout, err = capsys.readouterr()
        rows = [json.loads(ln) for ln in stdout.splitlines()]
        assert [(Path(r["source"]).name, r["label"] is None) for r in rows] == [
            ("a_face.png", False), ("b_bomb.png", True), ("c_face.png", False)]  # in input order
        assert "too many pixels" in rows[1]["error"]
        assert "b_bomb.png: too many pixels" in err and "Traceback" not in err
        assert sorted(p.name for p in (out / str(code)).iterdir()) == ["a_face.png", "c_face.png"]


def test_dataset_reader_names_an_image_over_the_pixel_limit(fer_folder, fer_slice, tmp_path, capsys):
    import shutil
    root = tmp_path / "fer2013"
    shutil.copytree(fer_folder, root)
    buf = io.BytesIO()
    Image.fromarray(fer_slice["pixels"][0]).save(buf, format="PNG")
    (root / "train" / "happy" / "Training_bomb.png").write_bytes(_png_claiming(20000, 20000, buf.getvalue()))
    assert main(["data", str(root), "--no-cache"]) == 2
    err = capsys.readouterr().err
    assert "train/happy/Training_bomb.png: too many pixels" in err and "Traceback" not in err
    assert main(["data", str(root), "--no-cache", "--skip-bad"]) == 0
    assert "skipped bad rows: 1" in capsys.readouterr().out


def test_threads_option_is_applied_and_checked(run_dir, fer_slice, tmp_path):
    Image.fromarray(fer_slice["pixels"][0]).save(tmp_path / "face.png")
    code = ("import sys, torch; from ferlab.cli import main; rc = main(sys.argv[1:]); "
            "print('threads', torch.get_num_threads()); sys.exit(rc)")
    proc = subprocess.run([sys.executable, "-c", code, "predict", str(tmp_path / "face.png"), "--model", str(run_dir),
                           "--detector", "none", "--threads", "1"], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0 and proc.stdout.splitlines()[-1] == "threads 1"
    assert main(["predict", str(tmp_path / "face.png"), "--model", str(run_dir), "--threads", "0"]) == 2


def test_frames_detected_together_give_the_faces_found_one_by_one(run_dir, astronaut, tmp_path, monkeypatch):
    """A folder's photos go through MTCNN in groups of frames (one batched pass each); photos of other sizes,
    faceless and unreadable ones among them keep their place and get what one photo at a time gives them."""
    from ferlab.inference import predictor as predictor_module
    folder = tmp_path / "in"
    folder.mkdir()
    for i in range(5):
        Image.fromarray(np.roll(astronaut, (9 * i, -11 * i), axis=(0, 1))).save(folder / f"p{i}.png")
    Image.fromarray(np.ascontiguousarray(astronaut[40:340, 60:460])).save(folder / "p5_crop.png")
    Image.fromarray(np.full((300, 300, 3), 90, np.uint8)).save(folder / "p6_blank.png")
    (folder / "p7_broken.jpg").write_bytes(b"not an image")
    Image.fromarray(astronaut[:, ::-1].copy()).save(folder / "p8.png")
    pred = ferlab.Predictor(run_dir)  # MTCNN, the default detector
    calls = []
    many = pred.detector.many
    pred.detector.many = lambda grays, rgbs: calls.append(len(grays)) or many(grays, rgbs)

    def run():
        errors = []
        out = [(Path(fr.source).name, fr.error is not None, faces) for fr, faces in pred.stream(folder, errors=errors)]
        return out, errors

    together, errors = run()
    assert calls == [7, 1]  # 9 files: a group of 8 (the broken one not among the pictures detected), then 1
    assert [name for name, _, _ in together] == sorted(p.name for p in folder.iterdir())
    assert len(errors) == 1 and together[7][1] and together[6][2] == []
    monkeypatch.setattr(predictor_module, "DETECT_FRAMES", 1)
    calls.clear()
    alone, _ = run()
    assert set(calls) == {1}
    for (name, bad, a), (_, _, b) in zip(together, alone):
        assert [f["box"] for f in a] == [f["box"] for f in b], name
        for fa, fb in zip(a, b):
            assert fa["label"] == fb["label"]
            np.testing.assert_allclose(list(fa["probs"].values()), list(fb["probs"].values()), atol=1e-5)
    assert sum(len(f) for _, _, f in together) >= 7  # the astronaut's face in each of her seven photos


def test_camera_frames_are_never_held_for_a_detection_group():
    from ferlab.inference.predictor import DETECT_FRAMES, _detect_groups
    from ferlab.inference.sources import Frame
    img = np.zeros((100, 100, 3), np.uint8)
    files = [len(g) for g in _detect_groups(iter([Frame(img) for _ in range(DETECT_FRAMES + 3)]))]
    assert files == [DETECT_FRAMES, 3]
    live = [len(g) for g in _detect_groups(iter([Frame(img, live=True) for _ in range(3)]))]
    assert live == [1, 1, 1]
    big = np.zeros((1500, 2000, 3), np.uint8)  # 3 MP: two of them reach DETECT_PIXELS
    assert [len(g) for g in _detect_groups(iter([Frame(big) for _ in range(3)]))] == [2, 1]


def test_a_dollar_in_a_video_name_is_text_not_mathtext(run_dir, astronaut, video, tmp_path, capsys):
    """A video named `$\\frac{$.mp4` (two dollars: matplotlib would parse its title as a formula, and fail):
    `--save` still writes its timeline and summary, and the inputs after it keep their annotated copies."""
    odd = tmp_path / "in" / "$\\frac{$.mp4"
    odd.parent.mkdir()
    odd.write_bytes(video.read_bytes())
    Image.fromarray(astronaut).save(tmp_path / "in" / "after.png")
    out = tmp_path / "out"
    assert main(["predict", str(odd), str(tmp_path / "in" / "after.png"), "--model", str(run_dir), "--every", "3",
                 "--save", str(out), "--no-progress"]) == 0
    rows = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert {Path(r["source"]).name for r in rows} == {odd.name, "after.png"}
    assert sorted(p.name for p in out.iterdir()) == sorted(["$\\frac{$_annotated.mp4", "$\\frac{$_emotions.csv",
                                                            "$\\frac{$_timeline.png", "after.png"])
    timeline = Image.open(out / "$\\frac{$_timeline.png")
    assert timeline.size[0] > 500 and np.asarray(timeline.convert("L")).std() > 10


def test_a_full_disk_is_one_line_and_leaves_no_partial_file(run_dir, fer_slice, astronaut, video, small_disk,
                                                            tmp_path, capsys):
    """`--save` onto a real file system that fills up: every input still gets its rows, the copies written before
    the disk filled are whole, nothing half-written stays (no truncated PNG, no unplayable MP4, no temporary
    file), and the failure is one line naming the file and saying "no space left" (exit 2, also with
    --keep-going: the copies asked for were not all written)."""
    folder = tmp_path / "in"
    folder.mkdir()
    Image.fromarray(fer_slice["pixels"][0]).save(folder / "a_face.png")
    (folder / "b_clip.mp4").write_bytes(video.read_bytes())
    Image.fromarray(astronaut).save(folder / "c_astronaut.png")
    inputs = [str(folder / n) for n in ("a_face.png", "b_clip.mp4", "c_astronaut.png")]
    disk = small_disk.mount(2 * 2**20)
    # room for the face's copy and the video's (about 100 KB at their peak) but not the astronaut's (400 KB);
    # then room for nothing the video needs (its MP4 alone is about 20 KB)
    for free, order, keep_going, lost in ((200_000, inputs, True, "c_astronaut.png"),
                                          (8_192, inputs[1:] + inputs[:1], False, "b_clip_annotated.mp4")):
        out = disk / f"out-{free}"
        out.mkdir()
        filler = small_disk.leave(disk, free)
        code = main(["predict", *order, "--model", str(run_dir), "--every", "3", "--save", str(out),
                     "--no-progress"] + (["--keep-going"] if keep_going else []))
        stdout, err = capsys.readouterr()
        assert code == 2, err
        rows = [json.loads(line) for line in stdout.splitlines()]
        assert {Path(r["source"]).name for r in rows} == {"a_face.png", "b_clip.mp4", "c_astronaut.png"}
        assert {r["frame"] for r in rows if r["source"].endswith(".mp4")} == {0, 3}  # all the sampled frames
        [line] = [ln for ln in err.splitlines() if "no space left" in ln]
        assert str(out / lost) in line and line.startswith("ferlab predict: error:"), err
        assert "Traceback" not in err and "ffmpeg" not in err.lower(), err
        saved = sorted(p.name for p in out.rglob("*"))
        if lost == "c_astronaut.png":
            assert saved == ["a_face.png", "b_clip_annotated.mp4", "b_clip_emotions.csv", "b_clip_timeline.png"]
            cap = cv2.VideoCapture(str(out / "b_clip_annotated.mp4"))
            assert cap.isOpened() and int(cap.get(cv2.CAP_PROP_FRAME_COUNT)) == 2  # whole, playable
            cap.release()
            assert Image.open(out / "a_face.png").size == (48, 48)
        else:
            assert saved == []
        filler.unlink()


def test_damaged_checkpoints_are_one_clear_line(run_dir, fer_slice, tmp_path, capsys):
    """A checkpoint without its weights or its preprocessing, with a model argument its network does not take, of a
    format version this ferlab does not know, with NaN weights (or a NaN temperature), or with weights of another
    network: `predict --model` and `eval` each say in one line which file and what is wrong (exit 2, no
    traceback), and the Predictor refuses it, so no NaN probability is ever returned."""
    good = torch.load(run_dir / "best.pt", weights_only=True)
    nan_weights = {k: v.clone() for k, v in good["state_dict"].items()}
    first_conv = next(k for k, v in nan_weights.items() if v.ndim == 4)
    nan_weights[first_conv][0, 0, 0, 0] = float("nan")
    damaged = {  # file -> (checkpoint, what the line must say)
        "no_weights.pt": ({k: v for k, v in good.items() if k != "state_dict"}, "no state_dict"),
        "no_preprocess.pt": ({k: v for k, v in good.items() if k != "preprocess"}, "no preprocess"),
        "unknown_arg.pt": ({**good, "model_args": {"wings": 2}}, "model_args"),
        "future.pt": ({**good, "format_version": 99}, "format_version 99"),
        "nan_weights.pt": ({**good, "state_dict": nan_weights}, f"{first_conv}: 1 of "),
        "nan_temperature.pt": ({**good, "temperature": float("nan")}, "temperature nan"),
        "other_net.pt": ({**good, "model": "vgg_m"}, "its weights do not fit its 'vgg_m' network (Error(s) in"),
    }
    Image.fromarray(fer_slice["pixels"][0]).save(tmp_path / "face.png")
    for name, (ckpt, said) in damaged.items():
        torch.save(ckpt, tmp_path / name)
        for argv in (["predict", str(tmp_path / "face.png"), "--model", str(tmp_path / name), "--detector", "none"],
                     ["eval", str(tmp_path / name)]):
            assert main(argv) == 2, argv
            out, err = capsys.readouterr()
            assert out == "" and err.count("\n") == 1 and "Traceback" not in err, (argv, err)
            assert err.startswith(f"ferlab {argv[0]}: error: {tmp_path / name}: ") and said in err, (argv, err)
        with pytest.raises(ValueError, match=re.escape(said)):
            ferlab.Predictor(tmp_path / name, detector="none")
    assert main(["predict", str(tmp_path / "face.png"), "--model", str(run_dir), "--detector", "none"]) == 0
