"""Videos with a full face detection on every K-th frame only, the faces followed by MTCNN's O-Net between
(inference/tracking.py): the same faces and labels as a detection on every frame, on a clip made by
bench/video_clips.py; a face that appears found at the next full detection, one that goes dropped at once;
O-Net alone finds a detected face again; the crops greyed around each face are the crops of the whole grey
frame; the option in the Predictor and the CLI."""
from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np
import pytest
from skimage import data as skdata

import ferlab
from conftest import load_bench
from ferlab.cli import main
from ferlab.inference.detect import make_detector
from ferlab.inference.faces import crop_faces, crop_faces_from, to_gray
from ferlab.inference.tracking import FaceFollower
from ferlab.inference.video import iou

vc = load_bench("video_clips")


@pytest.fixture(scope="module")
def mtcnn():
    return make_detector("mtcnn")


@pytest.fixture(scope="module")
def two_faces(tmp_path_factory) -> Path:
    """4 s at 30 frames/s, 640x480: two faces drifting about, growing, shrinking and tilting."""
    return vc.make_clip(tmp_path_factory.mktemp("clips") / "two.mp4", (640, 480), seconds=4.0, scene="two")


def test_following_finds_the_faces_and_labels_of_a_detection_on_every_frame(two_faces):
    """The issue's check, on a short clip: the same faces (IoU >= 0.8) in at least 98% of the frames and the same
    label in at least 97%, with full detections on a tenth of the frames."""
    every = vc.by_frame(ferlab.Predictor("default", detect_every=1).stream(two_faces))
    pred = ferlab.Predictor("default", detect_every=10)
    followed = vc.by_frame(pred.stream(two_faces))
    assert len(every) == len(followed) == 120 and sum(map(len, every.values())) == 240  # both faces, every frame
    agree = vc.agreement(every, followed)
    assert agree["faces"] >= 0.98 and agree["labels"] >= 0.97, agree
    assert pred.follower.detections <= 14, pred.follower.detections  # 12 on schedule, and a lost face or two
    # the rows are whole: followed faces have their score, landmarks and a track id that they keep
    rows = [r for faces in followed.values() for r in faces]
    assert all(r["score"] > 0.8 and r["landmarks"] and r["track"] in (1, 2) for r in rows)


def _scene(n: int, face_from: int, face_to: int) -> list[np.ndarray]:
    """n 640x480 frames of skimage's rocket, the astronaut's head (moving 3 px a frame) in frames face_from to
    face_to - 1 only."""
    background = cv2.resize(skdata.rocket(), (640, 480), interpolation=cv2.INTER_AREA)
    head = skdata.astronaut()[0:250, 100:350]
    frames = []
    for i in range(n):
        frame = background.copy()
        if face_from <= i < face_to:
            x = 150 + 3 * i
            frame[100:350, x:x + 250] = head
        frames.append(frame)
    return frames


def test_a_face_that_appears_is_found_at_the_next_full_detection_and_one_that_goes_is_dropped_at_once(mtcnn):
    frames = _scene(36, face_from=13, face_to=25)
    every = [len(FaceFollower(mtcnn, 1)(f)) for f in frames[12:26]]
    assert every == [0] + [1] * 12 + [0]  # a detection on every frame sees it in frames 13 to 24
    follower = FaceFollower(mtcnn, 10)
    found = [len(follower(f)) for f in frames]
    # full detections at frames 0, 10, 20 (on schedule) and 25, when the followed face is lost; the face that
    # appeared in frame 13 is found at 20, 7 frames late, as documented; no face is kept after it went
    assert found == [0] * 20 + [1] * 5 + [0] * 11
    # 0, 10, 20, 25, then every 2nd frame while the lost face is looked for (27 to 35)
    assert follower.detections == 9 and follower.frames == 36
    assert follower.watching == 30 - (35 - 25)  # looked for during 30 frames after it was lost
    follower.reset()  # another video: it starts with a full detection, at the usual pace
    assert len(follower(frames[20])) == 1 and follower.detections == 10 and follower.watching == 0


def test_a_face_hidden_behind_another_is_found_again_within_frames(tmp_path):
    """Two faces crossing (10 s, 640x480): where one hides the other, the follower loses it, and full detections
    come more often until it is back; the faces of a detection on every frame in at least 98% of the frames,
    their labels in at least 97% (it was 94.3% with detections on schedule only)."""
    clip = vc.make_clip(tmp_path / "cross.mp4", (640, 480), seconds=10.0, scene="cross")
    every = vc.by_frame(ferlab.Predictor("default", detect_every=1).stream(clip))
    pred = ferlab.Predictor("default", detect_every=10)
    agree = vc.agreement(every, vc.by_frame(pred.stream(clip)))
    assert agree["faces"] >= 0.98 and agree["labels"] >= 0.97, agree
    assert pred.follower.detections <= 60, pred.follower.detections  # 30 on schedule; fewer than a fifth in all


def test_onet_alone_finds_a_detected_face_again_and_nothing_where_there_is_none(mtcnn):
    photo = skdata.astronaut()
    (face,) = mtcnn(to_gray(photo), photo)
    (again,) = mtcnn.follow(photo, [face.box])
    assert iou(again.box, face.box) >= 0.9 and again.score > 0.99
    assert np.abs(np.array(again.landmarks) - np.array(face.landmarks)).max() < 3
    moved = np.roll(photo, (6, -8), axis=(0, 1))  # the face 8 px left and 6 px down
    (there,) = mtcnn(to_gray(moved), moved)
    (followed,) = mtcnn.follow(moved, [face.box])  # from where it was
    assert iou(followed.box, there.box) >= 0.8
    assert mtcnn.follow(np.full_like(photo, 128), [face.box]) == [None]  # a grey frame: no face there
    assert mtcnn.follow(photo, []) == []


# the astronaut photo, and cut so that her face touches its left, top, top-left, right and bottom edges
@pytest.mark.parametrize("cut", [(0, 0, 512, 512), (0, 185, 512, 512), (75, 0, 512, 512), (70, 180, 512, 512),
                                 (0, 0, 512, 270), (0, 0, 160, 512)])
@pytest.mark.parametrize("align", [True, False])
def test_crops_greyed_around_each_face_are_those_of_the_whole_grey_frame(mtcnn, cut, align):
    """Also where the face touches the frame's edge (the upright crop repeats the edge either way)."""
    y0, x0, y1, x1 = cut
    photo = np.ascontiguousarray(skdata.astronaut()[y0:y1, x0:x1])
    faces = mtcnn(to_gray(photo), photo)
    assert len(faces) == 1
    for a, b in zip(crop_faces_from(photo, faces, align), crop_faces(to_gray(photo), faces, align)):
        np.testing.assert_array_equal(a, b)


def test_detect_every_option(two_faces, tmp_path, capsys):
    with pytest.raises(ValueError, match="detect_every must be >= 1, got 0"):
        ferlab.Predictor("default", detect_every=0)
    assert ferlab.Predictor("default").detect_every == 10
    assert ferlab.Predictor("default", detector="haar", detect_every=10).detect_every == 1  # nothing to follow with
    assert main(["predict", str(two_faces), "--detect-every", "0", "--no-progress"]) == 2
    assert "detect_every must be >= 1" in capsys.readouterr().err
    assert main(["predict", str(two_faces), "--detect-every", "5", "--every", "4", "--no-progress"]) == 0
    rows = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert sorted({r["frame"] for r in rows}) == list(range(0, 120, 4)) and len(rows) == 60
