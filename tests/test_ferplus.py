"""FER+ votes on real FER2013 faces: read with every form, reported by `ferlab data --stats`, and trained on.

The expected votes, majorities and targets are computed here from the packaged vote file with this file's own
parsing and arithmetic, never by the module under test.
"""
from __future__ import annotations

import csv
import gzip
import io
import json
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from ferlab.cli import main
from ferlab.data import CLASSES, USAGES, DataError, load_fer2013, make_splits, read_fer2013
from ferlab.data.ferplus import VOTES_FILE, blend_targets, left_out, relabel
from ferlab.engine import fit, load_checkpoint, model_from_checkpoint, predict_probs
from ferlab.engine import trainer
from ferlab.engine.config import load_config
from ferlab.inference.preprocess import to_model_input
from test_data import FER_CSV_HEADER, ICML_HEADER, RENAMED, _csv, _pixels, _tar_gz, _write_tree, _zip
from test_train import NO_AUGMENT, tiny_config

COLS = ("neutral", "happiness", "surprise", "sadness", "anger", "disgust", "fear", "contempt", "unknown", "NF")
EIGHT = (*CLASSES, "contempt")
OUR_NAME = {"neutral": "neutral", "happiness": "happy", "surprise": "surprise", "sadness": "sad", "anger": "angry",
            "disgust": "disgust", "fear": "fear", "contempt": "contempt"}
ORIGINAL = {v: k for k, v in RENAMED.items()}
SPLIT_OF = {"Training": "train", "PublicTest": "val", "PrivateTest": "test"}
EXTRAS = 2  # faces per usage without votes, and with an unknown or NF majority, added to the slice


@pytest.fixture(scope="module", autouse=True)
def _restore_threads():
    n = torch.get_num_threads()
    yield
    torch.set_num_threads(n)


# ----------------------------------------------------------------------------------------------- expectations

@pytest.fixture(scope="module")
def table() -> dict[str, dict]:
    """file ("fer2013/train/angry/Training_1.jpg") -> usage, FER+ image name and votes (None: FER+ dropped it)."""
    with gzip.open(VOTES_FILE, "rt", newline="") as f:
        rows = list(csv.DictReader(f))
    return {r["file"]: {"usage": r["usage"], "image": r["ferplus_image"],
                        "votes": [int(r[c]) for c in COLS] if r["neutral"] else None} for r in rows}


def own_majority(votes, columns: int = 10):
    """The first most voted of FER+'s first `columns` columns, as an index of EIGHT; None for no votes, no vote
    in those columns, or an unknown/NF majority."""
    if votes is None:
        return None
    best = max(range(columns), key=lambda i: (votes[i], -i))
    if votes[best] == 0 or COLS[best] not in OUR_NAME:
        return None
    return EIGHT.index(OUR_NAME[COLS[best]])


def own_shares(votes, classes: int):
    """Vote shares over the first `classes` of EIGHT."""
    counts = [0.0] * classes
    for c, n in zip(COLS, votes):
        if c in OUR_NAME and EIGHT.index(OUR_NAME[c]) < classes:
            counts[EIGHT.index(OUR_NAME[c])] = n
    total = sum(counts)
    return [n / total for n in counts]


@pytest.fixture(scope="module")
def voted_faces(fer_source, fer_data, fer_slice, table) -> dict[str, bytes]:
    """fer2013/<split>/<class>/<file> -> JPEG: the real slice, and from the test data EXTRAS faces per usage that FER+
    dropped and EXTRAS whose majority is unknown or NF, so that every kind of face is there."""
    from pathlib import PurePosixPath

    from ferlab.data.readers import read_files
    if fer_data.form != "folder":
        pytest.skip("the FER+ vote file is keyed by the Kaggle layout's file names; FERLAB_TEST_DATA is a CSV copy")
    faces = {f"fer2013/{n}": raw for n, raw in zip(fer_slice["names"], fer_slice["jpeg"])}
    want = Counter()
    extra = set()
    for file, r in table.items():
        kind = "none" if r["votes"] is None else "unknown" if own_majority(r["votes"]) is None else None
        if kind and file not in faces and want[kind, r["usage"]] < EXTRAS:
            want[kind, r["usage"]] += 1
            extra.add(file)
    # the copy's own member names (any top folder): matched on split/class/file, as the votes are
    held = {"/".join(PurePosixPath(str(i)).parts[-3:]): str(i) for i in fer_data.ids}
    wanted = {held["/".join(PurePosixPath(f).parts[-3:])]: f for f in extra}
    for member, raw in read_files(fer_source, list(wanted)).items():
        faces[wanted[member]] = raw
    assert len(faces) == len(fer_slice["names"]) + len(extra) == len(fer_slice["names"]) + 2 * 3 * EXTRAS
    return faces


def renamed_members(faces: dict[str, bytes], top: str = "FER-2013 (my copy)") -> dict[str, bytes]:
    """The faces under another top folder, their class folders named as other re-packagings name them."""
    out = {}
    for file, raw in faces.items():
        _, split, cls, name = file.split("/")
        out[f"{top}/{split}/{RENAMED[cls]}/{name}"] = raw
    return out


@pytest.fixture(scope="module")
def voted_folder(voted_faces, tmp_path_factory) -> Path:
    return _write_tree(tmp_path_factory.mktemp("voted"), voted_faces) / "fer2013"


def file_of(rid: str) -> str:
    """The vote file's name for a face read from a renamed copy."""
    split, cls, name = str(rid).split("/")[-3:]
    return f"fer2013/{split}/{ORIGINAL.get(cls, cls)}/{name}"


def assert_votes(data, table) -> None:
    for rid, v in zip(data.ids, data.votes):
        want = table[file_of(rid)]["votes"]
        assert v.tolist() == (want if want is not None else [-1] * 10), rid


# ----------------------------------------------------------------------------------------------- the folder layout

@pytest.mark.parametrize("container", ["folder", "zip", "tar.gz"])
def test_every_face_of_the_kaggle_layout_gets_its_votes_by_file_name(container, tmp_path, voted_faces, table):
    members = renamed_members(voted_faces)
    path = {"folder": lambda: _write_tree(tmp_path / "tree", members) / "FER-2013 (my copy)",
            "zip": lambda: _zip(tmp_path / "copy.zip", members),
            "tar.gz": lambda: _tar_gz(tmp_path / "copy.tar.gz", members)}[container]()
    data = read_fer2013(path)
    assert data.form == "folder" and len(data) == len(voted_faces)
    assert_votes(data, table)
    none = sum(table[f]["votes"] is None for f in voted_faces)
    assert (data.votes[:, 0] < 0).sum() == none >= 3 * EXTRAS
    assert "packaged" in data.votes_source
    for _ in range(2):  # decoded, then from the array cache, which keeps no votes: attached again
        np.testing.assert_array_equal(load_fer2013(path).votes, data.votes)


def test_the_votes_follow_the_face_through_the_splits(voted_folder, table):
    data = read_fer2013(voted_folder)
    splits = make_splits(data, "official", seed=3, fraction=0.5)
    for name, usage in (("train", "Training"), ("val", "PublicTest"), ("test", "PrivateTest")):
        s = splits[name]
        by_pixels = {im.tobytes(): v for im, v in zip(data.images, data.votes)}
        for im, v in zip(s.images, s.votes):
            np.testing.assert_array_equal(v, by_pixels[im.tobytes()])


# ----------------------------------------------------------------------------------------------- the CSV forms

def original_order(faces: dict[str, bytes], table) -> list[str]:
    """The faces in fer2013.csv's order as far as FER+ tells it: by usage, then FER+'s image number (which grows
    with the row); a face FER+ dropped has no number and goes last in its usage."""
    def key(file):
        r = table[file]
        return USAGES.index(r["usage"]), r["image"] == "", r["image"]
    return sorted(faces, key=key)


def fer2013_csv(order, faces, header=FER_CSV_HEADER) -> bytes:
    rows = [{"emotion": CLASSES.index(f.split("/")[2]), "Usage": f.split("/")[-1].split("_")[0],
             "pixels": _pixels(np.asarray(Image.open(io.BytesIO(faces[f])).convert("L")))} for f in order]
    return _csv(header, rows)


def fer2013new_csv(order, table, extra_top: str | None = None) -> bytes:
    """FER+'s file for these rows: Usage, Image name (empty where FER+ dropped the face), the 10 votes."""
    lines = ["Usage,Image name," + ",".join(COLS)]
    if extra_top:
        lines.append(f"{extra_top},fer9999999.png,10,0,0,0,0,0,0,0,0,0")
    for f in order:
        r = table[f]
        votes = r["votes"] if r["votes"] is not None else [0] * 9 + [10]
        lines.append(f"{r['usage']},{r['image']},{','.join(map(str, votes))}")
    return ("\n".join(lines) + "\n").encode()


@pytest.mark.parametrize("kind", ["csv_file", "icml_file", "csv_in_zip", "csv_in_tar_gz", "csv_with_a_bad_row"])
def test_csv_rows_get_the_votes_of_fer2013new_row_for_row(kind, tmp_path, voted_faces, voted_folder, table):
    """A fer2013.csv of real faces in their original order with FER+'s fer2013new.csv beside it: every face has
    the votes it has when read from the Kaggle folder layout, also after a skipped bad row."""
    order = original_order(voted_faces, table)
    fer, new = fer2013_csv(order, voted_faces), fer2013new_csv(order, table)
    skip_bad = False
    if kind == "csv_file":
        path = _write_tree(tmp_path, {"fer2013.csv": fer, "fer2013new.csv": new}) / "fer2013.csv"
    elif kind == "icml_file":
        icml = fer2013_csv(order, voted_faces, ICML_HEADER)
        path = _write_tree(tmp_path, {"icml_face_data.csv": icml, "FERPlus/fer2013new.csv": new})
    elif kind == "csv_in_zip":
        path = _zip(tmp_path / "both.zip", {"fer2013/fer2013.csv": fer, "FERPlus-master/fer2013new.csv": new})
    elif kind == "csv_in_tar_gz":
        path = _tar_gz(tmp_path / "both.tar.gz", {"fer2013/fer2013.csv": fer, "fer2013new.csv": new})
    else:  # row 7 (the 6th face) cannot be read; --skip-bad drops it and the rows after it keep their own votes
        lines = fer.split(b"\n")
        lines[6] = b"x" + lines[6][lines[6].index(b","):]  # emotion x
        path = _write_tree(tmp_path, {"fer2013.csv": b"\n".join(lines), "fer2013new.csv": new}) / "fer2013.csv"
        skip_bad = True
    data = read_fer2013(path, skip_bad=skip_bad)
    assert data.votes_source.endswith("fer2013new.csv, row for row")
    assert len(data) == len(order) - skip_bad and len(data.skipped) == skip_bad
    from_folder = read_fer2013(voted_folder)
    folder_votes = {file_of(rid): v for rid, v in zip(from_folder.ids, from_folder.votes)}
    for rid, img, v in zip(data.ids, data.images, data.votes):
        face = order[int(str(rid).rsplit(":", 1)[1]) - 2]
        np.testing.assert_array_equal(img, np.asarray(Image.open(io.BytesIO(voted_faces[face])).convert("L")))
        np.testing.assert_array_equal(v, folder_votes[face], err_msg=f"{rid} = {face}")
    dropped = sum(table[order[int(str(rid).rsplit(":", 1)[1]) - 2]]["votes"] is None for rid in data.ids)
    assert (data.votes[:, 0] < 0).sum() == dropped >= 3 * EXTRAS - skip_bad  # the faces FER+ dropped, both ways


def test_a_fer2013new_that_does_not_follow_the_csv_is_one_line(tmp_path, voted_faces, table, capsys):
    order = original_order(voted_faces, table)
    fer = fer2013_csv(order, voted_faces)
    # one row too many at the top: every row is one off, which shows where the first PublicTest row meets Training
    shifted = _write_tree(tmp_path / "shifted", {"fer2013.csv": fer,
                                                 "fer2013new.csv": fer2013new_csv(order, table, "Training")})
    assert main(["data", str(shifted / "fer2013.csv")]) == 2
    row = 2 + [table[f]["usage"] for f in order].index("PublicTest")
    err = capsys.readouterr().err
    assert err == (f"ferlab data: error: fer2013.csv row {row} is PublicTest but fer2013new.csv row {row} is "
                   "Training: the two files do not list the same faces row for row (FER+'s file follows the "
                   "original fer2013.csv); remove fer2013new.csv or use the one FER+ publishes\n")

    short = fer2013new_csv(order[:3], table)
    _write_tree(tmp_path / "short", {"fer2013.csv": fer, "fer2013new.csv": short})
    assert main(["data", str(tmp_path / "short")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1
    assert "error: fer2013.csv row 5: fer2013new.csv has only 4 rows; it must follow fer2013.csv row for row" in err

    _write_tree(tmp_path / "other", {"fer2013.csv": fer, "fer2013new.csv": b"Usage,Image,neutral\n"})
    assert main(["data", str(tmp_path / "other")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "fer2013new.csv: not FER+'s fer2013new.csv: expected the columns Usage, " \
                                    "Image name, neutral," in err


def test_a_csv_alone_has_no_votes_and_says_where_they_come_from(tmp_path, voted_faces, table, capsys):
    """FER+'s image numbers are not fer2013.csv's rows, so without fer2013new.csv no row is given votes."""
    order = original_order(voted_faces, table)
    path = _write_tree(tmp_path, {"fer2013.csv": fer2013_csv(order, voted_faces)}) / "fer2013.csv"
    data = read_fer2013(path)
    assert (data.votes == -1).all() and data.votes_source is None
    assert main(["data", str(path), "--stats"]) == 0
    assert "FER+ votes: none of these faces has any (the Kaggle folder layout gets them from ferlab's packaged " \
           "vote file; fer2013.csv and icml_face_data.csv from FER+'s fer2013new.csv" in capsys.readouterr().out
    cfg = tiny_config(path, tmp_path / "runs", labels="ferplus")
    with pytest.raises(DataError, match="labels: ferplus needs FER\\+ votes, and no face of the train split has any"):
        fit(cfg, progress=False)


# ----------------------------------------------------------------------------------------------- stats, labels

def test_data_stats_counts_votes_and_agreement_per_split_and_class(voted_folder, voted_faces, table, capsys):
    assert main(["data", str(voted_folder), "--stats"]) == 0
    out = capsys.readouterr().out
    section = out[out.index("FER+ votes (from ferlab's packaged FER+ vote file, by file name):"):].splitlines()
    rows = {line.split()[0]: line.split()[1:] for line in section if line.split() and
            line.split()[0] in ("train", "val", "test", *CLASSES)}
    per_split = {s: [f for f in voted_faces if SPLIT_OF[table[f]["usage"]] == s] for s in ("train", "val", "test")}
    for s, files in per_split.items():
        voted = [f for f in files if table[f]["votes"] is not None]
        both = [f for f in voted if own_majority(table[f]["votes"], 7) is not None]
        agree = sum(own_majority(table[f]["votes"], 7) == CLASSES.index(f.split("/")[2]) for f in both)
        agree10 = sum(own_majority(table[f]["votes"]) == CLASSES.index(f.split("/")[2]) for f in voted)
        assert rows[s] == [str(len(files)), str(len(voted)), f"{100 * agree / len(both):.1f}%",
                           f"{100 * agree10 / len(voted):.1f}%"], s
    for k, c in enumerate(CLASSES):
        want = []
        for s, files in per_split.items():
            both = [f for f in files if f.split("/")[2] == c and table[f]["votes"] is not None
                    and own_majority(table[f]["votes"], 7) is not None]
            want.append(f"{100 * sum(own_majority(table[f]['votes'], 7) == k for f in both) / len(both):.1f}%")
        assert rows[c] == want, c
    kept = {s: sum(own_majority(table[f]["votes"]) is not None for f in files) for s, files in per_split.items()}
    none = {s: sum(table[f]["votes"] is None for f in files) for s, files in per_split.items()}
    unknown = {s: len(files) - kept[s] - none[s] for s, files in per_split.items()}
    assert (f"labels: ferplus / ferplus_dist keep train {kept['train']}, val {kept['val']}, test {kept['test']} faces, "
            f"leaving out\nthose without votes (train {none['train']}, val {none['val']}, test {none['test']}) and "
            f"with an unknown or NF majority (train {unknown['train']}, val {unknown['val']}, test {unknown['test']})"
            ) in out


def test_ferplus_labels_leave_out_faces_without_votes_or_with_an_unknown_or_nf_majority(voted_folder, table):
    data = read_fer2013(voted_folder)
    files = [file_of(rid) for rid in data.ids]
    splits = make_splits(data, "official")
    for name, usage in (("train", "Training"), ("val", "PublicTest"), ("test", "PrivateTest")):
        mine = [f for f in files if table[f]["usage"] == usage]
        none = sum(table[f]["votes"] is None for f in mine)
        unknown = sum(table[f]["votes"] is not None and own_majority(table[f]["votes"]) is None for f in mine)
        assert left_out(splits[name].votes) == (none, unknown) and none >= EXTRAS and unknown >= EXTRAS
        kept = [m for m in (own_majority(table[f]["votes"]) for f in mine) if m is not None]
        assert len(kept) == len(mine) - none - unknown
        for mode in ("ferplus", "ferplus_dist"):
            s = relabel(splits, mode)[name]
            assert s.labels.tolist() == kept, (mode, name)
            assert len(s.images) == len(s.votes) == len(kept)
            by_pixels = {im.tobytes(): f for im, f in zip(data.images, files)}
            assert [own_majority(table[by_pixels[im.tobytes()]]["votes"]) for im in s.images] == kept
    assert relabel(splits, "fer2013") is splits


def test_blend_target_of_one_real_face_by_hand(table):
    """labels: fer2013, ferplus_blend: 0.3, label_smoothing: 0.1 for a face whose votes include contempt and
    unknown (left out of the 7 shared emotions before renormalising) and one without votes."""
    face = next(f for f, r in table.items() if r["votes"] and r["votes"][7] and r["votes"][8]
                and sum(1 for n in r["votes"][:7] if n) >= 3)
    v, y = table[face]["votes"], CLASSES.index(face.split("/")[2])
    neutral, happiness, surprise, sadness, anger, disgust, fear = v[:7]
    shared = sum(v[:7])
    votes_as_ours = [anger, disgust, fear, happiness, sadness, surprise, neutral]  # angry..neutral
    hand = [0.7 * ((0.9 if k == y else 0.0) + 0.1 / 7) + 0.3 * votes_as_ours[k] / shared for k in range(7)]
    no_votes = [(0.9 if k == 2 else 0.0) + 0.1 / 7 for k in range(7)]
    got = blend_targets(np.array([y, 2]), np.array([v, [-1] * 10], np.int8), 0.3, 0.1)
    np.testing.assert_allclose(got, [hand, no_votes], rtol=1e-6)
    assert got.sum(1) == pytest.approx([1.0, 1.0])


# ----------------------------------------------------------------------------------------------- training

MODES = [("fer2013", 0.3, CLASSES), ("ferplus", 0.0, EIGHT), ("ferplus_dist", 0.0, EIGHT)]


@pytest.fixture(scope="module")
def mode_runs(voted_folder, tmp_path_factory):
    out = tmp_path_factory.mktemp("mode-runs")
    runs = {}
    for mode, blend, _ in MODES:
        cfg = tiny_config(voted_folder, out, name=mode, labels=mode, ferplus_blend=blend, epochs=1,
                          label_smoothing=0.1)
        runs[mode] = (out / fit(cfg, progress=False)["name"], cfg)
    return runs


@pytest.mark.parametrize("mode, blend, classes", MODES)
def test_each_label_mode_trains_a_model_of_its_classes_scored_against_its_labels(mode, blend, classes, mode_runs,
                                                                                  table):
    run, cfg = mode_runs[mode]
    summary = json.loads((run / "summary.json").read_text())
    for name in ("best.pt", "last.pt"):
        ckpt = load_checkpoint(run / name)
        assert ckpt["classes"] == list(classes) and ckpt["config"]["labels"] == mode
    model, pre = model_from_checkpoint(load_checkpoint(run / "best.pt"))
    assert summary["labels"] == mode and list(summary["test_per_class_recall"]) == list(classes)

    # the test split as the run had it, labelled here: FER2013's labels, or the FER+ majority where there is one
    data = load_fer2013(cfg.data)
    test = make_splits(data, "official", seed=cfg.seed, fraction=cfg.fraction)["test"]
    if mode == "fer2013":
        images, labels = test.images, test.labels
    else:
        majority = [own_majority(v.tolist() if v[0] >= 0 else None) for v in test.votes]
        keep = np.array([m is not None for m in majority])
        images, labels = test.images[keep], np.array([m for m in majority if m is not None])
        assert 0 < len(labels) < len(test)
    probs = predict_probs(model, torch.from_numpy(images), pre, torch.device("cpu"))
    assert probs.shape == (len(labels), len(classes))
    assert summary["test_accuracy"] == pytest.approx(100 * (probs.argmax(1).numpy() == labels).mean(), abs=1e-9)


@pytest.mark.parametrize("mode, blend", [("ferplus_dist", 0.0), ("fer2013", 0.3)])
def test_soft_targets_reach_the_loss_with_their_own_faces(mode, blend, voted_folder, tmp_path, monkeypatch, table):
    """Every face in every batch meets the target made from its own votes (the epoch permutation indexes faces
    and targets alike), label smoothing included once."""
    seen_x, seen_t = [], []
    real_augment, real_ce = trainer.augment, torch.nn.functional.cross_entropy

    def spy_augment(x, cfg, gen):
        x = real_augment(x, cfg, gen)
        seen_x.append(x.detach().clone())
        return x

    def spy_ce(logits, target, **kw):
        if target.ndim == 2:
            assert kw.get("label_smoothing") == 0.0  # already in the target
            seen_t.append(target.detach().clone())
        return real_ce(logits, target, **kw)

    monkeypatch.setattr(trainer, "augment", spy_augment)
    monkeypatch.setattr(torch.nn.functional, "cross_entropy", spy_ce)
    cfg = tiny_config(voted_folder, tmp_path, labels=mode, ferplus_blend=blend, epochs=1, augment=NO_AUGMENT,
                      label_smoothing=0.1, tta=False)
    fit(cfg, progress=False)
    assert seen_x and len(seen_x) == len(seen_t)

    train = make_splits(load_fer2013(cfg.data), "official", seed=cfg.seed, fraction=cfg.fraction)["train"]
    inputs = to_model_input(torch.from_numpy(train.images), trainer.build_preprocess(cfg), torch.device("cpu"))
    flat = inputs.flatten(1)
    checked = 0
    for x, t in zip(seen_x, seen_t):
        for xi, ti in zip(x.flatten(1), t):
            i = int((flat - xi).abs().amax(1).argmin())
            assert float((flat[i] - xi).abs().max()) < 1e-5
            v = train.votes[i].tolist()
            if mode == "ferplus_dist":
                want = [0.9 * p + 0.1 / 8 for p in own_shares(v, 8)]
            else:
                y = int(train.labels[i])
                hard = [(0.9 if k == y else 0.0) + 0.1 / 7 for k in range(7)]
                want = hard if v[0] < 0 else [0.7 * h + 0.3 * p for h, p in zip(hard, own_shares(v, 7))]
            np.testing.assert_allclose(ti.numpy(), want, rtol=1e-5, atol=1e-7)
            checked += 1
    assert checked == len(seen_x) * cfg.batch_size


def test_a_ferplus_run_resumed_ends_where_the_uninterrupted_run_ends(voted_folder, tmp_path):
    kw = dict(labels="ferplus_dist", epochs=2, augment=dict(hflip=0.5, rotate=5.0, erase=0.5))
    straight = tmp_path / "straight" / fit(tiny_config(voted_folder, tmp_path / "straight", **kw),
                                           progress=False)["name"]

    def stop_after_first(epoch, metrics):
        if epoch == 1:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        fit(tiny_config(voted_folder, tmp_path / "cut", **kw), progress=False, epoch_hook=stop_after_first)
    summary = fit(None, resume=tmp_path / "cut" / "tiny", progress=False)
    a, b = (load_checkpoint(p / "last.pt") for p in (straight, tmp_path / "cut" / "tiny"))
    assert a["classes"] == b["classes"] == list(EIGHT)
    for k, v in a["state_dict"].items():
        torch.testing.assert_close(v, b["state_dict"][k], rtol=1e-4, atol=1e-5, msg=k)
    assert json.loads((straight / "summary.json").read_text())["test_accuracy"] == summary["test_accuracy"]


def test_eval_and_calibrate_score_a_ferplus_model_against_the_ferplus_majority(mode_runs, capsys):
    run, cfg = mode_runs["ferplus"]
    splits = make_splits(load_fer2013(cfg.data), "official", seed=cfg.seed)  # eval: the whole split
    majority = [own_majority(v.tolist() if v[0] >= 0 else None) for v in splits["test"].votes]
    keep = np.array([m is not None for m in majority])
    model, pre = model_from_checkpoint(load_checkpoint(run))
    probs = predict_probs(model, torch.from_numpy(splits["test"].images[keep]), pre, torch.device("cpu"))
    accuracy = 100 * (probs.argmax(1).numpy() == np.array([m for m in majority if m is not None])).mean()
    assert main(["eval", str(run), "--split", "test", "--no-tta"]) == 0
    out = capsys.readouterr().out
    assert f"on test (official split, {keep.sum()} faces), scored against the FER+ majority" in out
    assert "\ncontempt " in out and f"accuracy {accuracy:.2f}%" in out

    assert main(["calibrate", str(run)]) == 0  # fitted on the run's validation faces that have a FER+ majority
    val_faces = int(capsys.readouterr().out.split("validation split (")[1].split(" faces")[0])
    val = make_splits(load_fer2013(cfg.data), "official", seed=cfg.seed, fraction=cfg.fraction)["val"]
    assert val_faces == sum(own_majority(v.tolist() if v[0] >= 0 else None) is not None for v in val.votes)


def test_ferplus_runs_package_as_one_ensemble_calibrated_and_scored_on_the_ferplus_majority(mode_runs, tmp_path,
                                                                                             capsys):
    """Two FER+ runs as one 8-class ensemble (`python -m ferlab.weights --ensemble --ferplus`): its temperature is
    fitted on the validation faces that have a FER+ majority, against it; `ferlab eval` scores it on the FER+
    benchmark; a FER2013 member is refused with the reason."""
    from ferlab.engine.package import package_ensemble
    (a, cfg), (b, _) = mode_runs["ferplus"], mode_runs["ferplus_dist"]
    path, record = package_ensemble([a, b], tmp_path / "ferplus.pt", device="cpu", classes=8)
    val = make_splits(load_fer2013(cfg.data), "official", seed=cfg.seed)["val"]
    assert record["faces"] == sum(own_majority(v.tolist() if v[0] >= 0 else None) is not None for v in val.votes)
    assert 0 < record["faces"] < len(val)
    ckpt = load_checkpoint(path)
    assert ckpt["model"] == "ensemble" and ckpt["classes"] == list(EIGHT) and ckpt["temperature"] > 0
    assert main(["eval", str(path), "--split", "test", "--data", str(cfg.data)]) == 0
    assert "scored against the FER+ majority" in capsys.readouterr().out
    with pytest.raises(ValueError, match="predicts 7 classes .* must predict 8"):
        package_ensemble([a, mode_runs["fer2013"][0]], tmp_path / "mixed.pt", device="cpu", classes=8)


def test_config_refuses_unknown_label_modes_and_a_blend_outside_fer2013_labels():
    with pytest.raises(ValueError, match="labels: 'fer2013plus' is not one of fer2013, ferplus, ferplus_dist"):
        load_config(None, ["labels=fer2013plus"])
    with pytest.raises(ValueError, match="ferplus_blend mixes FER\\+'s votes into the FER2013 labels"):
        load_config(None, ["labels=ferplus_dist", "ferplus_blend=0.3"])
    with pytest.raises(ValueError, match="ferplus_blend: 1.5 is not a share between 0 and 1"):
        load_config(None, ["ferplus_blend=1.5"])


def test_packaged_ferplus_config_is_the_cpu_recipe_on_vote_shares_and_trains(voted_folder, tmp_path):
    mine, base = load_config("ferplus_vgg_s").to_dict(), load_config("vgg_s_cpu48").to_dict()
    assert {k for k in mine if mine[k] != base[k]} == {"name", "labels", "epochs", "label_smoothing"}
    assert (mine["labels"], mine["epochs"], mine["precision"], mine["threads"], mine["model"], mine["input_size"],
            mine["label_smoothing"]) == ("ferplus_dist", 40, "bf16", 1, "vgg_s", 48, 0.0)
    assert main(["train", "ferplus_vgg_s", "epochs=1", "fraction=0.5", "batch_size=32", "tta=false",
                 f"out_dir={tmp_path}", "--data", str(voted_folder), "--no-progress"]) == 0
    ckpt = load_checkpoint(tmp_path / "ferplus_vgg_s")
    assert ckpt["classes"] == list(EIGHT) and ckpt["config"]["labels"] == "ferplus_dist"
    model, _ = model_from_checkpoint(ckpt)
    assert model(torch.zeros(2, 1, 48, 48)).shape == (2, 8)


# ----------------------------------------------------------------------------------------------- crowd

def own_crowd(probs: np.ndarray, votes: np.ndarray) -> tuple[int, float, float, float]:
    """(faces, mean KL(crowd || model), % agreeing with the crowd's majority over the 7 shared emotions, mean
    KL(crowd || uniform)), face by face with math.log."""
    import math
    kls, uniform, agree = [], [], []
    for p, v in zip(probs.tolist(), votes.tolist()):
        if v[0] < 0 or own_majority(v, 7) is None:
            continue
        crowd = own_shares(v, 7)
        model = [x / sum(p[:7]) for x in p[:7]]
        kls.append(sum(c * math.log(c / m) for c, m in zip(crowd, model) if c > 0))
        uniform.append(sum(c * math.log(c * 7) for c in crowd if c > 0))
        agree.append(max(range(7), key=lambda k: model[k]) == own_majority(v, 7))
    return len(kls), sum(kls) / len(kls), 100 * sum(agree) / len(agree), sum(uniform) / len(uniform)


@pytest.mark.parametrize("mode", ["fer2013", "ferplus"])
def test_eval_compares_probabilities_with_the_crowd_as_computed_by_hand(mode, mode_runs, capsys):
    """A FER2013 (7-class) and a FER+ (8-class, contempt dropped) model measured on the same faces: every test face
    with a vote for one of the 7 shared emotions, whatever faces the accuracy is scored on."""
    from ferlab.engine.evaluation import evaluate_checkpoints
    run, cfg = mode_runs[mode]
    test = make_splits(load_fer2013(cfg.data), "official", seed=cfg.seed)["test"]
    model, pre = model_from_checkpoint(load_checkpoint(run))
    probs = predict_probs(model, torch.from_numpy(test.images), pre, torch.device("cpu")).double().numpy()
    faces, kl, agree, uniform = own_crowd(probs, test.votes)
    assert 0 < faces < len(test) and uniform > 0

    res = evaluate_checkpoints([str(run)], "test", tta=False, device="cpu")
    crowd = res["plain"]["crowd"]
    assert crowd["faces"] == faces
    assert crowd["model"]["kl"] == pytest.approx(kl, rel=1e-4)
    assert crowd["model"]["agree"] == pytest.approx(agree, abs=1e-9)
    assert crowd["uniform"]["kl"] == pytest.approx(uniform, rel=1e-6) and crowd["uniform"]["agree"] is None

    assert main(["eval", str(run), "--split", "test", "--no-tta"]) == 0
    out = capsys.readouterr().out
    assert f"compared with the FER+ crowd on {faces} faces" in out
    assert f"model (plain){kl:>24.4f}{agree:>21.2f}%" in out and f"uniform{uniform:>30.4f}" in out


def test_crowd_comparison_refuses_wrong_shapes_and_faces_without_votes():
    from ferlab.engine.crowd import compare_with_crowd
    votes = np.array([[5, 0, 0, 0, 3, 0, 0, 2, 0, 0]], np.int8)
    with pytest.raises(ValueError, match=r"expected probabilities of shape \(N, 7\) or \(N, 8\), got \(1, 5\)"):
        compare_with_crowd(np.full((1, 5), 0.2), votes)
    with pytest.raises(ValueError, match="no face here carries a FER\\+ vote for one of the 7 shared emotions"):
        compare_with_crowd(np.full((1, 7), 1 / 7), np.array([[0] * 7 + [10, 0, 0]], np.int8))
    # a perfect model: KL 0, agrees; the contempt votes are left out of the crowd's shares
    perfect = np.array([[3 / 8, 0, 0, 0, 0, 0, 5 / 8]])  # angry 3, neutral 5 (FER2013 order)
    r = compare_with_crowd(perfect, votes)
    assert r["model"]["kl"] == pytest.approx(0, abs=1e-9) and r["model"]["agree"] == 100.0


# ----------------------------------------------------------------------------------------------- 8 classes

def test_an_eight_class_model_through_predict_serve_export_and_the_ferplus_name(mode_runs, voted_folder, tmp_path,
                                                                                 monkeypatch, capsys):
    """contempt reaches every consumer: Predictor faces, the CSV's columns, the REST answer, the ONNX export's
    classes and outputs; `--model ferplus` resolves to the packaged FER+ file, and says so while it is missing."""
    from fastapi.testclient import TestClient

    from ferlab import weights
    from ferlab.inference.onnx import OnnxClassifier, export_onnx
    from ferlab.inference.predictor import Predictor
    from ferlab.serve.app import create_app
    run, cfg = mode_runs["ferplus"]
    test = make_splits(load_fer2013(cfg.data), "official", seed=cfg.seed)["test"]
    crops = [np.repeat(im[..., None], 3, 2) for im in test.images[:3]]

    monkeypatch.setattr(weights, "FERPLUS_WEIGHTS", tmp_path / "not-there.pt")
    with pytest.raises(FileNotFoundError, match="the ferplus model is not packaged in this ferlab"):
        Predictor("ferplus", detector="none")
    monkeypatch.setattr(weights, "FERPLUS_WEIGHTS", run / "best.pt")
    pred = Predictor("ferplus", detector="none")
    assert pred.classes == EIGHT
    faces = pred.predict(crops[0])
    assert list(faces[0]["probs"]) == list(EIGHT) and faces[0]["label"] in EIGHT
    assert sum(faces[0]["probs"].values()) == pytest.approx(1.0, abs=1e-4)

    folder = tmp_path / "crops"
    folder.mkdir()
    for i, c in enumerate(crops):
        Image.fromarray(c).save(folder / f"face{i}.png")
    assert main(["predict", str(folder), "--model", "ferplus", "--detector", "none", "--format", "csv"]) == 0
    rows = list(csv.reader(io.StringIO(capsys.readouterr().out)))
    first = rows[0].index("label") + 1
    assert rows[0][first:first + len(EIGHT)] == list(EIGHT) and len(rows) == 1 + len(crops)
    assert all(abs(sum(float(x) for x in r[first:first + len(EIGHT)]) - 1) < 1e-3 for r in rows[1:])

    client = TestClient(create_app(pred), base_url="http://127.0.0.1")
    assert client.get("/health").json()["classes"] == list(EIGHT)
    buf = io.BytesIO()
    Image.fromarray(crops[1]).save(buf, "PNG")
    answer = client.post("/v1/predict", files={"file": ("face.png", buf.getvalue(), "image/png")}).json()
    assert answer["classes"] == list(EIGHT) and list(answer["faces"][0]["probs"]) == list(EIGHT)

    report = export_onnx("ferplus", tmp_path / "ferplus.onnx", data=voted_folder, n_check=8)
    onnx_model = OnnxClassifier(tmp_path / "ferplus.onnx")
    assert onnx_model.classes == EIGHT and max(report["max_abs_diff"].values()) < 1e-3
    np.testing.assert_allclose(onnx_model(test.images[:3]).sum(1), 1.0, atol=1e-4)
    assert onnx_model(test.images[:3]).shape == (3, len(EIGHT))
