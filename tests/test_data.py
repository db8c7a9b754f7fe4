"""Every FER2013 form, built at test time from real faces, read back through `read_fer2013`/`load_fer2013`.

Each form is made from the same slice of the development archive, so every reader must give back the
same pixels, the same canonical labels and the same Usage for every row.
"""
from __future__ import annotations

import io
import shutil
import tarfile
import zipfile
from collections import Counter
from pathlib import Path, PurePosixPath

import numpy as np
import pytest
import torch
from PIL import Image

import ferlab.data.cache as cache_mod
from ferlab.cli import main
from ferlab.data import CLASSES, USAGES, DataError, load_fer2013, make_splits, read_fer2013
from ferlab.data.cache import cache_dir, fingerprint

# Folder names other re-packagings use, deliberately not in canonical (or alphabetical) order.
RENAMED = {"angry": "Anger", "disgust": "disgusted", "fear": "Fearful", "happy": "Happiness", "sad": "SAD",
           "surprise": "surprised", "neutral": "Neutral"}


# ---------------------------------------------------------------------------------------------
# Builders: each writes one form of the slice under tmp_path.

def _pixels(img: np.ndarray) -> str:
    return " ".join(map(str, img.ravel()))


def _csv(header: list[str], rows: list[dict]) -> bytes:
    """CSV text whose columns follow `header` (names may carry spaces, as icml_face_data.csv's do)."""
    lines = [",".join(header)]
    for r in rows:
        lines.append(",".join(str(r[h.strip()]) for h in header))
    return ("\n".join(lines) + "\n").encode()


def _rows(s: dict, idx=None) -> list[dict]:
    idx = range(len(s["labels"])) if idx is None else idx
    return [{"emotion": int(s["labels"][i]), "pixels": _pixels(s["pixels"][i]), "Usage": s["usage"][i]}
            for i in idx]


def _zip(path: Path, members: dict[str, bytes]) -> Path:
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED, compresslevel=1) as z:
        for name, raw in members.items():
            z.writestr(name, raw)
    return path


def _tar_gz(path: Path, members: dict[str, bytes]) -> Path:
    with tarfile.open(path, "w:gz", compresslevel=1) as tf:
        for name, raw in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(raw)
            tf.addfile(info, io.BytesIO(raw))
    return path


def _folder_members(s: dict, rename: dict | None = None) -> dict[str, bytes]:
    out = {}
    for name, raw in zip(s["names"], s["jpeg"]):
        split, cls, fname = name.split("/")
        out[f"fer2013/{split}/{(rename or {}).get(cls, cls)}/{fname}"] = raw
    return out


def _write_tree(root: Path, members: dict[str, bytes]) -> Path:
    for name, raw in members.items():
        p = root / name
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_bytes(raw)
    return root


FER_CSV_HEADER = ["emotion", "pixels", "Usage"]
ICML_HEADER = ["emotion", " Usage", " pixels"]


def build_form(kind: str, tmp: Path, s: dict, fer_folder: Path, csv: bytes) -> Path:
    """Write the slice as `kind` under tmp (csv: the slice as fer2013.csv) and return the path a user would pass."""
    if kind == "folder":
        return fer_folder
    if kind == "folder_zip":
        return _zip(tmp / "fer2013.zip", _folder_members(s))
    if kind == "folder_tar_gz":
        return _tar_gz(tmp / "fer2013.tar.gz", _folder_members(s))
    if kind == "csv_file":
        (tmp / "fer2013.csv").write_bytes(csv)
        return tmp / "fer2013.csv"
    if kind == "csv_in_folder":
        return _write_tree(tmp / "download", {"fer2013/fer2013.csv": csv, "README.txt": b"from kaggle"})
    if kind == "csv_in_zip":
        return _zip(tmp / "fer2013.zip", {"fer2013/fer2013.csv": csv})
    if kind == "icml_file":
        (tmp / "icml_face_data.csv").write_bytes(_csv(ICML_HEADER, _rows(s)))
        return tmp / "icml_face_data.csv"
    if kind == "nested":  # Kaggle's challenge zip carries fer2013.tar.gz inside it
        inner = _tar_gz(tmp / "fer2013.tar.gz", {"fer2013/fer2013.csv": csv}).read_bytes()
        return _zip(tmp / "challenge.zip", {"fer2013.tar.gz": inner, "example_submission.txt": b"id,label\n"})
    raise AssertionError(kind)


FORMS = {  # kind -> the form name the reader must report
    "folder": "folder", "folder_zip": "folder", "folder_tar_gz": "folder",
    "csv_file": "fer2013.csv", "csv_in_folder": "fer2013.csv", "csv_in_zip": "fer2013.csv",
    "icml_file": "icml_face_data.csv", "nested": "fer2013.csv",
}


def _slice_order(data, s: dict, rename: dict | None = None) -> np.ndarray:
    """For every row read, its index in the slice (by file name for images, by row number for CSVs)."""
    by_name = {n: i for i, n in enumerate(s["names"])}
    original = {v: k for k, v in (rename or {}).items()}
    out = []
    for rid in data.ids:
        rid = str(rid)
        if rid.endswith(".jpg"):
            split, cls, fname = rid.split("/")[-3:]
            cls = original.get(cls, cls)
            out.append(by_name[f"{split}/{cls}/{fname}"])
        else:
            out.append(int(rid.rsplit(":", 1)[1]) - 2)  # CSV row 2 is the first data row
    return np.array(out)


def _assert_same_as_slice(data, s: dict, rename: dict | None = None) -> None:
    order = _slice_order(data, s, rename)
    assert len(data) == len(s["labels"]) and sorted(order) == list(range(len(s["labels"])))
    assert data.images.dtype == np.uint8 and data.images.shape[1:] == (48, 48)
    np.testing.assert_array_equal(data.images, s["pixels"][order])
    np.testing.assert_array_equal(data.labels, s["labels"][order])
    assert [USAGES[u] for u in data.usage] == [s["usage"][i] for i in order]


# ---------------------------------------------------------------------------------------------
# Every form reads back the same faces.

@pytest.fixture(scope="module")
def fer_csv(fer_slice) -> bytes:
    return _csv(FER_CSV_HEADER, _rows(fer_slice))


@pytest.mark.parametrize("kind", list(FORMS))
def test_every_form_reads_the_same_faces(kind, tmp_path, fer_slice, fer_folder, fer_csv):
    path = build_form(kind, tmp_path, fer_slice, fer_folder, fer_csv)
    data = read_fer2013(path)
    assert data.form == FORMS[kind]
    assert Counter(USAGES[u] for u in data.usage) == Counter(fer_slice["usage"])
    _assert_same_as_slice(data, fer_slice)


def test_slice_has_every_usage_and_class(fer_slice):
    # The fixtures must exercise every cell, or the form tests above could pass on a degenerate slice.
    cells = Counter(zip(fer_slice["usage"], fer_slice["labels"].tolist()))
    assert {u for u, _ in cells} == set(USAGES[:3]) and {k for _, k in cells} == set(range(len(CLASSES)))


def test_challenge_train_and_test_csv(tmp_path, fer_slice):
    train = [i for i, u in enumerate(fer_slice["usage"]) if u == "Training"]
    test = [i for i, u in enumerate(fer_slice["usage"]) if u != "Training"]
    root = tmp_path / "challenge"
    root.mkdir()
    (root / "train.csv").write_bytes(_csv(["emotion", "pixels"], _rows(fer_slice, train)))
    (root / "test.csv").write_bytes(_csv(["pixels"], _rows(fer_slice, test)))

    data = read_fer2013(root)
    assert data.form == "challenge"
    tr, un = data.usage == USAGES.index("Training"), data.usage == USAGES.index("Unlabeled")
    assert tr.sum() == len(train) and un.sum() == len(test) and len(data) == len(train) + len(test)
    np.testing.assert_array_equal(data.images[tr], fer_slice["pixels"][train])
    np.testing.assert_array_equal(data.labels[tr], fer_slice["labels"][train])
    np.testing.assert_array_equal(data.images[un], fer_slice["pixels"][test])
    assert (data.labels[un] == -1).all()

    alone = read_fer2013(root / "train.csv")  # train.csv on its own: all Training
    assert alone.form == "challenge" and len(alone) == len(train)
    assert (alone.usage == USAGES.index("Training")).all()


@pytest.mark.parametrize("container", ["folder", "zip"])
def test_labels_are_canonical_whatever_the_folder_names(container, tmp_path, fer_slice):
    members = _folder_members(fer_slice, RENAMED)
    path = _write_tree(tmp_path / "renamed", members) if container == "folder" else \
        _zip(tmp_path / "renamed.zip", members)
    data = read_fer2013(path)
    assert data.form == "folder"
    assert any("/Happiness/" in str(i) for i in data.ids)  # the aliases really were on disk
    _assert_same_as_slice(data, fer_slice, RENAMED)


def test_folder_named_by_index(tmp_path, fer_slice):
    by_index = {c: str(i) for i, c in enumerate(CLASSES)}
    data = read_fer2013(_write_tree(tmp_path / "idx", _folder_members(fer_slice, by_index)))
    _assert_same_as_slice(data, fer_slice, by_index)


def test_unprefixed_files_get_usage_from_their_folder(tmp_path, fer_slice):
    members = {k.replace("Training_", "").replace("PublicTest_", "").replace("PrivateTest_", ""): v
               for k, v in _folder_members(fer_slice).items()}
    data = read_fer2013(_write_tree(tmp_path / "plain", members))
    n_train = sum(u == "Training" for u in fer_slice["usage"])
    assert (data.usage == USAGES.index("Training")).sum() == n_train
    assert (data.usage == USAGES.index("PrivateTest")).sum() == len(data) - n_train


# ---------------------------------------------------------------------------------------------
# The array cache.

def test_second_load_comes_from_the_cache(tmp_path, fer_slice, monkeypatch):
    path = _zip(tmp_path / "fer2013.zip", _folder_members(fer_slice))
    first = load_fer2013(path)
    file = cache_dir() / f"fer2013-{fingerprint(path)}.npz"
    assert file.is_file()

    def no_decode(*a, **k):
        raise AssertionError("read_fer2013 called although the cache holds this source")
    monkeypatch.setattr(cache_mod, "read_fer2013", no_decode)
    second = load_fer2013(path)
    for field in ("images", "labels", "usage", "ids"):
        np.testing.assert_array_equal(getattr(second, field), getattr(first, field))
    assert (second.form, second.source) == (first.form, first.source)


def test_changed_source_is_read_again(tmp_path, fer_slice):
    path = tmp_path / "fer2013.csv"
    path.write_bytes(_csv(FER_CSV_HEADER, _rows(fer_slice, range(40))))
    assert len(load_fer2013(path)) == 40
    path.write_bytes(_csv(FER_CSV_HEADER, _rows(fer_slice, range(55))))
    again = load_fer2013(path)
    assert len(again) == 55
    np.testing.assert_array_equal(again.images, fer_slice["pixels"][:55])


def test_damaged_cache_file_is_rebuilt(tmp_path, fer_slice):
    path = tmp_path / "fer2013.csv"
    path.write_bytes(_csv(FER_CSV_HEADER, _rows(fer_slice, range(30))))
    load_fer2013(path)
    file = cache_dir() / f"fer2013-{fingerprint(path)}.npz"
    file.write_bytes(b"PK\x03\x04 truncated by a full disk")
    data = load_fer2013(path)
    np.testing.assert_array_equal(data.images, fer_slice["pixels"][:30])


def test_empty_cache_file_is_rebuilt_for_good(tmp_path, fer_slice):
    """A 0-byte cache file (a kill or a full disk at the wrong moment): the load decodes again and writes a good
    cache file, so the next load comes from the cache."""
    path = tmp_path / "fer2013.csv"
    path.write_bytes(_csv(FER_CSV_HEADER, _rows(fer_slice, range(20))))
    file = cache_dir() / f"fer2013-{fingerprint(path)}.npz"
    file.parent.mkdir(parents=True, exist_ok=True)
    file.write_bytes(b"")
    np.testing.assert_array_equal(load_fer2013(path).images, fer_slice["pixels"][:20])
    assert file.stat().st_size > 20 * 48 * 48
    np.testing.assert_array_equal(load_fer2013(path).images, fer_slice["pixels"][:20])


def test_unusable_cache_folder_only_warns(tmp_path, fer_slice, monkeypatch):
    path = tmp_path / "fer2013.csv"
    path.write_bytes(_csv(FER_CSV_HEADER, _rows(fer_slice, range(12))))
    (tmp_path / "a_file").write_text("not a folder")
    monkeypatch.setenv("FERLAB_CACHE", str(tmp_path / "a_file" / "cache"))  # a path under a file
    with pytest.warns(UserWarning, match="could not write the FER2013 array cache.*FERLAB_CACHE"):
        data = load_fer2013(path)
    np.testing.assert_array_equal(data.images, fer_slice["pixels"][:12])


def test_cache_removes_leftovers_of_dead_writers_and_keeps_the_newest_entries(tmp_path, fer_slice, monkeypatch):
    import os
    import subprocess
    monkeypatch.setenv("FERLAB_CACHE", str(tmp_path / "cache"))
    folder = tmp_path / "cache"
    folder.mkdir()
    dead = subprocess.Popen(["true"])
    dead.wait()  # a pid that no longer runs
    left = folder / f"fer2013-0123456789abcdef0123.{dead.pid}.tmp.npz"
    left.write_bytes(b"x" * 1000)
    live = folder / f"fer2013-0123456789abcdef0123.{os.getpid()}.tmp.npz"
    live.write_bytes(b"x")
    for i in range(cache_mod.KEEP + 2):  # older entries, oldest first
        old = folder / f"fer2013-old{i}.npz"
        old.write_bytes(b"x")
        os.utime(old, (1_000_000 + i, 1_000_000 + i))
    path = tmp_path / "fer2013.csv"
    path.write_bytes(_csv(FER_CSV_HEADER, _rows(fer_slice, range(8))))
    load_fer2013(path)
    kept = sorted(p.name for p in folder.glob("fer2013-*.npz") if not p.name.endswith(".tmp.npz"))
    newest_old = [f"fer2013-old{i}.npz" for i in range(cache_mod.KEEP + 2)][-(cache_mod.KEEP - 1):]
    assert kept == sorted([f"fer2013-{fingerprint(path)}.npz", *newest_old])
    assert not left.exists() and live.exists()  # a running writer's file is left alone


def test_data_location_from_the_environment(tmp_path, fer_slice, monkeypatch):
    path = tmp_path / "fer2013.csv"
    path.write_bytes(_csv(FER_CSV_HEADER, _rows(fer_slice, range(10))))
    monkeypatch.setenv("FERLAB_DATA", str(path))
    assert len(load_fer2013()) == 10
    monkeypatch.delenv("FERLAB_DATA")
    with pytest.raises(DataError, match="FERLAB_DATA"):
        load_fer2013()


# ---------------------------------------------------------------------------------------------
# Bad data: every error names the file and the row or file inside it.

def _bad_csv(tmp: Path, s: dict, row: int, field: str, value) -> Path:
    rows = _rows(s, range(12))
    rows[row - 2][field] = value  # row 2 is the first data row
    path = tmp / "fer2013.csv"
    path.write_bytes(_csv(FER_CSV_HEADER, rows))
    return path


def _drop_one(img):
    return " ".join(_pixels(img).split()[:-1])


def _first_pixel(img, value: str) -> str:
    return " ".join([value] + _pixels(img).split()[1:])


BAD_ROWS = {  # name -> (row, field, value maker, what the message must say)
    "2303 values": (5, "pixels", _drop_one, "2303 values, expected 2304"),
    "non-integer pixel": (7, "pixels", lambda img: _first_pixel(img, "12.5"), "'12.5'"),
    "superscript digit": (8, "pixels", lambda img: _first_pixel(img, "\u00b2"), "'\u00b2'"),
    "pixel 256": (3, "pixels", lambda img: _first_pixel(img, "256"), "0-255"),
    "label 7": (9, "emotion", lambda img: 7, "'7'"),
    "label x": (4, "emotion", lambda img: "x", "'x'"),
    "unknown usage": (6, "Usage", lambda img: "Validation", "'Validation'"),
}


@pytest.mark.parametrize("case", list(BAD_ROWS))
def test_bad_csv_row_names_file_and_row(case, tmp_path, fer_slice):
    row, field, make, says = BAD_ROWS[case]
    path = _bad_csv(tmp_path, fer_slice, row, field, make(fer_slice["pixels"][row - 2]))
    with pytest.raises(DataError) as e:
        load_fer2013(path)
    msg = str(e.value)
    assert f"fer2013.csv row {row}" in msg and says in msg, msg


def test_folder_holding_only_the_archive(tmp_path, fer_slice):
    # e.g. --data ~/Downloads/fer2013 where the download sits unpacked-once: folder/fer2013.tar.gz
    _tar_gz(tmp_path / "fer2013.tar.gz", _folder_members(fer_slice))
    (tmp_path / "README.md").write_text("FER2013 from Kaggle")
    data = read_fer2013(tmp_path)
    assert data.form == "folder" and data.source == f"{tmp_path}!fer2013.tar.gz"
    _assert_same_as_slice(data, fer_slice)


def test_bad_row_inside_an_archive_names_archive_member_and_row(tmp_path, fer_slice):
    rows = _rows(fer_slice, range(8))
    rows[3]["emotion"] = 9
    inner = _tar_gz(tmp_path / "fer2013.tar.gz", {"fer2013/fer2013.csv": _csv(FER_CSV_HEADER, rows)})
    outer = _zip(tmp_path / "challenge.zip", {"fer2013.tar.gz": inner.read_bytes()})
    with pytest.raises(DataError) as e:
        read_fer2013(outer)
    msg = str(e.value)
    # the inner archive's bad row must not be hidden behind "no known form found"
    assert "challenge.zip!fer2013.tar.gz" in msg and "fer2013/fer2013.csv row 5" in msg and "'9'" in msg, msg


def test_csv_without_usage_column_is_refused(tmp_path, fer_slice):
    path = tmp_path / "faces.csv"
    path.write_bytes(_csv(["emotion", "pixels"], _rows(fer_slice, range(3))))
    with pytest.raises(DataError, match=r"faces\.csv: no 'Usage' column.*train\.csv"):
        read_fer2013(path)


BAD_FILES = {  # name -> (member written into a copy of the folder, its bytes, what the message must say)
    "corrupt jpeg": ("train/happy/Training_broken.jpg", lambda ok: ok[: len(ok) // 3], "not a readable image"),
    "garbage jpeg": ("test/sad/PublicTest_garbage.jpg", lambda ok: b"\x00" * 200, "not a readable image"),
    "non-image file": ("train/fear/notes.txt", lambda ok: b"labels checked by hand", "not an image file"),
}


def _folder_with(tmp: Path, s: dict, extra: dict[str, bytes]) -> Path:
    members = {k.split("/", 1)[1]: v for k, v in _folder_members(s).items()}
    return _write_tree(tmp / "fer2013", {**members, **extra})


@pytest.mark.parametrize("case", list(BAD_FILES))
def test_bad_file_in_class_folder(case, tmp_path, fer_slice):
    name, make, says = BAD_FILES[case]
    path = _folder_with(tmp_path, fer_slice, {name: make(fer_slice["jpeg"][0])})
    with pytest.raises(DataError) as e:
        load_fer2013(path)
    assert name in str(e.value) and says in str(e.value), str(e.value)


def test_skip_bad_drops_bad_files_and_counts_them(tmp_path, fer_slice):
    extra = {name: make(fer_slice["jpeg"][0]) for name, make, _ in BAD_FILES.values()}
    data = load_fer2013(_folder_with(tmp_path, fer_slice, extra), skip_bad=True)
    assert len(data) == len(fer_slice["labels"]) and len(data.skipped) == len(extra)
    assert all(any(name in msg for msg in data.skipped) for name in extra)
    _assert_same_as_slice(data, fer_slice)


def test_skip_bad_drops_bad_rows_and_counts_them(tmp_path, fer_slice):
    rows = _rows(fer_slice, range(30))
    for i in (2, 11, 20):
        rows[i]["pixels"] = _drop_one(fer_slice["pixels"][i])
    path = tmp_path / "fer2013.csv"
    path.write_bytes(_csv(FER_CSV_HEADER, rows))
    data = load_fer2013(path, skip_bad=True)
    keep = [i for i in range(30) if i not in (2, 11, 20)]
    np.testing.assert_array_equal(data.images, fer_slice["pixels"][keep])
    assert [m.split(":")[0] for m in data.skipped] == ["fer2013.csv row 4", "fer2013.csv row 13",
                                                        "fer2013.csv row 22"]
    assert len(load_fer2013(path, skip_bad=True).skipped) == 3  # the count survives the cache


def test_unknown_class_folder(tmp_path, fer_slice):
    path = _folder_with(tmp_path, fer_slice, {"train/contempt/Training_x.jpg": fer_slice["jpeg"][0]})
    with pytest.raises(DataError) as e:
        read_fer2013(path)
    msg = str(e.value)
    assert "train/contempt/Training_x.jpg" in msg and "'contempt'" in msg and ", ".join(CLASSES) in msg, msg


def test_archive_without_a_known_form_lists_what_it_holds(tmp_path, fer_slice):
    path = _zip(tmp_path / "photos.zip", {"faces/a.jpg": fer_slice["jpeg"][0], "notes.txt": b"hello"})
    with pytest.raises(DataError) as e:
        read_fer2013(path)
    msg = str(e.value)
    assert "photos.zip" in msg and "none of the known FER2013 forms" in msg
    assert "faces/a.jpg" in msg and "notes.txt" in msg and "2 files" in msg, msg


def test_corrupt_archive_is_a_data_error(tmp_path):
    for name in ("fer2013.zip", "fer2013.tar.gz"):
        path = tmp_path / name
        path.write_bytes(b"this is an HTML error page, not an archive")
        with pytest.raises(DataError, match=rf"{name}: not a readable"):
            read_fer2013(path)


class _Zeros(io.RawIOBase):
    """`size` zero bytes as a stream: a bomb member is written without ever being held in memory."""

    def __init__(self, size: int):
        self.left = size

    def readable(self) -> bool:
        return True

    def readinto(self, b) -> int:
        n = min(len(b), self.left)
        b[:n] = bytes(n)
        self.left -= n
        return n


def _bomb(path: Path, others: dict[str, bytes], zeros: dict[str, int]) -> Path:
    """An archive of `others` plus members of `zeros[name]` zero bytes each (a few hundred KB compressed)."""
    if path.name.endswith(".zip"):
        with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED, compresslevel=1) as z:
            for name, raw in others.items():
                z.writestr(name, raw)
            for name, size in zeros.items():
                with z.open(name, "w", force_zip64=True) as f:
                    for _ in range(size // 2**20):
                        f.write(bytes(2**20))
        return path
    with tarfile.open(path, "w:gz", compresslevel=1) as tf:
        for name, raw in others.items():
            info = tarfile.TarInfo(name)
            info.size = len(raw)
            tf.addfile(info, io.BytesIO(raw))
        for name, size in zeros.items():
            info = tarfile.TarInfo(name)
            info.size = size
            tf.addfile(info, _Zeros(size))
    return path


# `ferlab data` in a process of its own, with the member limits scaled down 100-fold so the bombs stay small:
# exit codes, stderr, and how far the peak memory rose over the reads. The peak is the kernel's VmHWM, reset first
# (ru_maxrss would not do: a child starts with the peak of the pytest process it was forked from).
PEAK = r"""
import json, re, sys
import ferlab.data.readers as readers
from ferlab.cli import main
readers.MAX_IMAGE_BYTES, readers.MAX_CSV_BYTES, readers.MAX_UNPACKED_BYTES = 2**20, 4 * 2**20, 8 * 2**20
def kib(field):
    return int(re.search(field + r":\s+(\d+) kB", open("/proc/self/status").read()).group(1))
open("/proc/self/clear_refs", "w").write("5")  # VmHWM := VmRSS
before = kib("VmRSS")
codes = [main(["data", "--no-cache", *args.split("|")]) for args in sys.argv[1:]]
print(json.dumps({"codes": codes, "grew_mib": (kib("VmHWM") - before) / 1024}))
"""


def _data_peak(*calls: str) -> tuple[dict, str, str]:
    import json
    import subprocess
    import sys
    p = subprocess.run([sys.executable, "-c", PEAK, *calls], capture_output=True, text=True, timeout=120)
    assert p.returncode == 0, p.stderr[-3000:]
    return json.loads(p.stdout.splitlines()[-1]), p.stdout, p.stderr


BOMB_MIB = 128  # what a bomb member unpacks to: 32 to 128 times the scaled-down limits


@pytest.mark.parametrize("archive", ["fer2013.tar.gz", "fer2013.zip"])
@pytest.mark.parametrize("member, limit", [("fer2013/train/happy/Training_99999999.jpg", "1 MiB"),
                                           ("fer2013/fer2013.csv", "4 MiB")])
def test_archive_bomb_member_is_refused_in_one_line_without_unpacking_it(archive, member, limit, tmp_path,
                                                                         fer_slice):
    """A member that unpacks to far more than a FER2013 file of its kind (a face image, a CSV) is refused by name
    before it fills the memory: 128 MiB of zeros, compressed to about 0.5 MB, against limits of 1 and 4 MiB. An
    image member is a bad file like any other: --skip-bad reads every real face and counts it as skipped."""
    faces = _folder_members(fer_slice) if member.endswith(".jpg") else {}
    path = _bomb(tmp_path / archive, faces, {member: BOMB_MIB * 2**20})
    assert path.stat().st_size < len(b"".join(faces.values())) + 2 * 2**20
    calls = [str(path)] + ([f"{path}|--skip-bad"] if faces else [])
    peak, out, err = _data_peak(*calls)
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"ferlab data: error: {path}!{member}: "), err
    assert f"more than the {limit}" in lines[0] and "Traceback" not in err, err
    assert peak["codes"] == [2] + ([0] if faces else [])
    assert peak["grew_mib"] < 32, peak  # a small multiple of the limit, far below the member's 128 MiB
    if faces:
        assert f"images: {len(fer_slice['labels'])} of 48x48" in out and "skipped bad rows: 1" in out, out


def test_tar_of_many_members_each_under_the_limit_is_refused_as_a_whole(tmp_path, fer_slice):
    """A .tar.gz is read in one pass and held in memory: 96 image members of 1 MiB of zeros each pass the
    per-member limit, but not the limit on everything unpacked (scaled down to 8 MiB), which names the archive."""
    zeros = {f"fer2013/train/happy/Training_9{i:07d}.jpg": 2**20 for i in range(96)}
    path = _bomb(tmp_path / "fer2013.tar.gz", _folder_members(fer_slice), zeros)
    peak, _, err = _data_peak(str(path))
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"ferlab data: error: {path}: "), err
    assert "more than the 8 MiB" in lines[0] and peak["codes"] == [2], err
    assert peak["grew_mib"] < 32, peak  # the 96 MiB it unpacks to are never all held


def test_member_longer_than_it_declares_is_cut_off_at_the_limit(monkeypatch):
    """zipfile and tarfile stop a member at its declared size, so the reader checks that size first; what it reads
    is counted too, and a stream that goes on past the limit is refused after one chunk over it."""
    from ferlab.data import readers
    monkeypatch.setattr(readers, "MAX_IMAGE_BYTES", 2**20)
    lying = io.BytesIO(bytes(8 * 2**20))
    with pytest.raises(DataError, match=r"^a\.zip!x\.jpg: unpacks to more than the 1 MiB a FER2013 image"):
        readers._read_capped(lying, "x.jpg", "a.zip!x.jpg", declared=100)
    assert lying.tell() <= 2**20 + readers.READ_CHUNK
    assert readers._read_capped(io.BytesIO(b"x" * 2**20), "x.jpg", "a.zip!x.jpg", 2**20) == b"x" * 2**20


def test_csv_is_parsed_without_copies_of_the_whole_file(tmp_path, fer_slice):
    """fer2013.csv is about 300 MB, and up to 400 MB pass the archive limit: reading it must cost a small multiple
    of its size, not one decoded copy and a 4-byte-per-character buffer more (1.77 GB measured for 296 MB)."""
    rows = _rows(fer_slice)
    path = tmp_path / "fer2013.csv"
    path.write_bytes(_csv(FER_CSV_HEADER, rows * 6))  # about 3000 real rows, 24 MB
    size_mib = path.stat().st_size / 2**20
    peak, out, err = _data_peak(str(path))
    assert peak["codes"] == [0] and f"images: {6 * len(rows)} of 48x48" in out, err
    assert peak["grew_mib"] < 2.5 * size_mib, (peak, size_mib)


def test_missing_path(tmp_path):
    with pytest.raises(DataError) as e:
        load_fer2013(tmp_path / "nowhere" / "fer2013.csv")
    assert "nowhere/fer2013.csv: no such file or folder" in str(e.value)


# ---------------------------------------------------------------------------------------------
# Splits.

@pytest.fixture(scope="module")
def slice_data(fer_folder):
    return read_fer2013(fer_folder)


def test_official_split_follows_usage(slice_data, fer_slice):
    splits = make_splits(slice_data, "official")
    for name, usage in (("train", "Training"), ("val", "PublicTest"), ("test", "PrivateTest")):
        sel = slice_data.usage == USAGES.index(usage)
        assert len(splits[name]) == fer_slice["usage"].count(usage) == sel.sum()
        np.testing.assert_array_equal(splits[name].images, slice_data.images[sel])
        np.testing.assert_array_equal(splits[name].labels, slice_data.labels[sel])
        assert splits[name].labels.dtype == np.int64


def _rows_as_bytes(images, labels) -> list[bytes]:
    return sorted(im.tobytes() + bytes([lab]) for im, lab in zip(images, labels))


def test_seed_split_is_a_70_15_15_partition_of_training(slice_data):
    splits = make_splits(slice_data, "seed", seed=42)
    train = slice_data.usage == USAGES.index("Training")
    n = int(train.sum())
    assert [len(splits[k]) for k in ("train", "val", "test")] == \
        [int(0.70 * n), int(0.85 * n) - int(0.70 * n), n - int(0.85 * n)]
    # Together the three hold every Training row exactly once, and nothing else: disjoint and complete.
    together = _rows_as_bytes(np.concatenate([splits[k].images for k in ("train", "val", "test")]),
                              np.concatenate([splits[k].labels for k in ("train", "val", "test")]))
    assert together == _rows_as_bytes(slice_data.images[train], slice_data.labels[train])


def test_seed_split_is_deterministic_per_seed(slice_data):
    a, b, c = (make_splits(slice_data, "seed", seed=s) for s in (7, 7, 8))
    for k in ("train", "val", "test"):
        np.testing.assert_array_equal(a[k].images, b[k].images)
    assert not np.array_equal(a["val"].images, c["val"].images)


def test_official_split_of_training_only_data_points_to_seed(tmp_path, fer_slice):
    train = [i for i, u in enumerate(fer_slice["usage"]) if u == "Training"]
    path = tmp_path / "train.csv"
    path.write_bytes(_csv(["emotion", "pixels"], _rows(fer_slice, train)))
    data = load_fer2013(path)
    with pytest.raises(DataError, match=r"val split of the 'official' protocol is empty.*split: seed"):
        make_splits(data, "official")
    assert sum(len(v) for v in make_splits(data, "seed").values()) == len(train)


def test_unknown_split_lists_valid_ones(slice_data):
    with pytest.raises(ValueError, match="official, seed"):
        make_splits(slice_data, "random")


# ---------------------------------------------------------------------------------------------
# The CLI.

def test_cli_data_describes_the_source(fer_folder, fer_slice, capsys):
    assert main(["data", str(fer_folder)]) == 0
    out = capsys.readouterr().out
    assert "form:   folder" in out and f"images: {len(fer_slice['labels'])} of 48x48" in out
    assert all(c in out for c in CLASSES)
    table = {line.split()[0]: [int(v) for v in line.split()[1:]] for line in out.splitlines()
             if line.split() and line.split()[0] in USAGES}
    assert set(table) == set(USAGES[:3])
    for usage, counts in table.items():
        want = [sum(1 for u, lab in zip(fer_slice["usage"], fer_slice["labels"]) if u == usage and lab == k)
                for k in range(len(CLASSES))]
        assert counts == want + [0, sum(want)], usage


def test_cli_data_bad_source_exits_2(tmp_path, fer_slice, capsys):
    assert main(["data", str(tmp_path / "missing")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("ferlab data: error:") and "missing" in err

    path = _bad_csv(tmp_path, fer_slice, 6, "emotion", "x")
    assert main(["data", str(path)]) == 2
    assert "fer2013.csv row 6" in capsys.readouterr().err
    assert main(["data", str(path), "--skip-bad"]) == 0
    out = capsys.readouterr().out
    assert "skipped bad rows: 1" in out and "fer2013.csv row 6" in out


# ----------------------------------------------------------------------------------------------- stats

def _gaussian_blur(faces: np.ndarray, sigma: float) -> np.ndarray:
    """uint8 faces (N, H, W) blurred by a separable Gaussian of `sigma` px (reflect-padded): a degraded copy."""
    r = max(1, int(3 * sigma + 0.5))
    t = torch.arange(-r, r + 1, dtype=torch.float32)
    k = torch.exp(-0.5 * (t / sigma) ** 2)
    k = k / k.sum()
    x = torch.from_numpy(faces).float()[:, None]
    x = torch.nn.functional.conv2d(torch.nn.functional.pad(x, (r, r, 0, 0), mode="reflect"), k.view(1, 1, 1, -1))
    x = torch.nn.functional.conv2d(torch.nn.functional.pad(x, (0, 0, r, r), mode="reflect"), k.view(1, 1, -1, 1))
    return x[:, 0].round().clamp(0, 255).to(torch.uint8).numpy()


def test_relative_blur_recovers_a_known_blur_on_real_faces(fer_slice):
    from ferlab.data.stats import relative_blur
    faces = fer_slice["pixels"][np.array([u != "Training" for u in fer_slice["usage"]])]
    assert relative_blur(faces, faces) == pytest.approx(0.0, abs=1e-6)
    for sigma in (1.0, 2.0):
        blurred = _gaussian_blur(faces, sigma)
        assert relative_blur(blurred, faces) == pytest.approx(sigma, abs=0.25)
        assert relative_blur(faces, blurred) == 0.0  # sharper than the reference: no blur


def _stats_lines(root, capsys) -> dict[str, str]:
    assert main(["data", str(root), "--stats", "--no-cache"]) == 0
    out = capsys.readouterr().out
    assert "sharpness p5/p50/p95" in out
    return {ln.split()[1].rstrip(":"): ln for ln in out.splitlines() if ln.startswith(("ok ", "WARNING "))}


def _degraded_copy(fer_folder, tmp_path, change) -> Path:
    """fer_folder with every Training face passed through `change` (uint8 (N, 48, 48) -> same), as PNG."""
    root = tmp_path / "fer2013"
    shutil.copytree(fer_folder, root)
    paths = sorted(root.glob("train/*/Training_*.jpg"))
    faces = np.stack([np.asarray(Image.open(p).convert("L")) for p in paths])
    for p, face in zip(paths, change(faces)):
        p.unlink()
        Image.fromarray(face).save(p.with_suffix(".png"))  # lossless: only `change` alters the faces
    return root


def test_data_stats_cli_is_quiet_on_clean_faces_and_warns_on_a_degraded_copy(fer_folder, tmp_path, capsys):
    clean = _stats_lines(fer_folder, capsys)  # the real archive: all three splits are the original faces
    assert set(clean) == {"val", "test"} and all(ln.startswith("ok ") for ln in clean.values()), clean

    blurred = _stats_lines(_degraded_copy(fer_folder, tmp_path / "blur", lambda f: _gaussian_blur(f, 2.0)), capsys)
    assert set(blurred) == {"val", "test"}
    for ln in blurred.values():
        assert ln.startswith("WARNING ") and "training faces are blurrier" in ln, ln  # (a blur also lowers contrast)
        assert 1.5 <= float(ln.split("sigma ")[1].split()[0]) <= 2.5, ln

    faded = _stats_lines(_degraded_copy(fer_folder, tmp_path / "fade",
                                        lambda f: (128 + 0.6 * (f.astype(np.float32) - 128)).round().astype(np.uint8)),
                         capsys)
    for ln in faded.values():
        assert ln.startswith("WARNING ") and "blurrier" not in ln, ln
        assert 150 <= int(ln.split("have ")[1].split("%")[0]) <= 180, ln  # 1 / 0.6 = 167%


def test_empty_or_missing_class_folder_is_named(fer_folder, tmp_path, capsys):
    """train/disgust emptied and test/fear removed: `ferlab data` still reads the rest, but names each split
    and class that has no face; training says so too."""
    root = tmp_path / "fer2013"
    shutil.copytree(fer_folder, root)
    for p in (root / "train" / "disgust").iterdir():
        p.unlink()
    shutil.rmtree(root / "test" / "fear")
    assert main(["data", str(root), "--no-cache"]) == 0
    warned = [ln for ln in capsys.readouterr().out.splitlines() if ln.startswith("WARNING")]
    assert warned == ["WARNING: no disgust faces in Training (an empty or missing class folder, or no such label)",
                      "WARNING: no fear faces in PublicTest (an empty or missing class folder, or no such label)",
                      "WARNING: no fear faces in PrivateTest (an empty or missing class folder, or no such label)"]
    assert load_fer2013(fer_folder, cache=False).missing_classes() == []  # the real slice has every class


def test_class_folder_behind_a_symlink_is_read_and_a_bad_link_is_named(fer_folder, fer_slice, tmp_path, capsys):
    """train/happy -> elsewhere/happy (a class folder kept on another disk): its faces are read like the others, and
    a face added behind the link reaches the cache. A link loop or a dangling link is one line naming it, exit 2,
    never a class read as 0 faces."""
    root, elsewhere = tmp_path / "fer2013", tmp_path / "elsewhere"
    shutil.copytree(fer_folder, root)
    elsewhere.mkdir()
    (root / "train" / "happy").rename(elsewhere / "happy")
    (root / "train" / "happy").symlink_to(elsewhere / "happy", target_is_directory=True)
    _assert_same_as_slice(load_fer2013(root), fer_slice)
    happy = fer_slice["names"].index(next(n for n in fer_slice["names"] if n.startswith("train/happy/")))
    (elsewhere / "happy" / "Training_99999999.jpg").write_bytes(fer_slice["jpeg"][happy])
    data = load_fer2013(root)  # a changed fingerprint: decoded again, not the cached faces
    (row,) = np.flatnonzero(data.ids == "train/happy/Training_99999999.jpg")
    np.testing.assert_array_equal(data.images[row], fer_slice["pixels"][happy])
    assert len(data) == len(fer_slice["labels"]) + 1

    loop = elsewhere / "happy" / "again"
    loop.symlink_to(root / "train", target_is_directory=True)  # train/happy/again/happy/again/...
    for cache in ([], ["--no-cache"]):
        assert main(["data", str(root), *cache]) == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and "Traceback" not in err, err
        assert f"{root / 'train' / 'happy' / 'again'} is {root / 'train'} again" in err and "link loop" in err, err
    loop.unlink()

    (elsewhere / "happy").rename(elsewhere / "moved")
    assert main(["data", str(root), "--no-cache"]) == 2
    err = capsys.readouterr().err
    assert f"{root / 'train' / 'happy'}: a symbolic link to {elsewhere / 'happy'}, which does not exist" in err, err


def test_serve_max_pixels_zero_is_refused_not_read_as_the_default(capsys):
    assert main(["serve", "--max-pixels", "0", "--detector", "none"]) == 2
    err = capsys.readouterr().err
    assert "max_pixels must be positive, got 0" in err


def test_16_bit_images_keep_their_brightness_everywhere(fer_folder, fer_slice, tmp_path):
    """A real face saved as a 16-bit PNG (mode I;16, value x 257) reads back as the same 8-bit face in the dataset
    reader, `predict`'s image reader and bytes decoder, a PIL image handed to the Predictor, and the REST decoder;
    not all white."""
    from ferlab.inference.faces import to_gray
    from ferlab.inference.sources import as_array, read_image
    from ferlab.inference.sources import decode_image as decode_bytes
    from ferlab.serve.analysis import decode_image
    face = fer_slice["pixels"][0]
    wide = Image.fromarray(face.astype(np.uint16) * 257)
    assert wide.mode.startswith("I;16")
    buf = io.BytesIO()
    wide.save(buf, format="PNG")
    png16 = buf.getvalue()

    root = tmp_path / "fer2013"
    shutil.copytree(fer_folder, root)
    name = fer_slice["names"][0]
    (root / name).unlink()
    (root / name).with_suffix(".png").write_bytes(png16)
    data = load_fer2013(root, cache=False)
    (row,) = np.flatnonzero(data.ids == str(PurePosixPath(name).with_suffix(".png")))
    np.testing.assert_array_equal(data.images[row], face)

    (tmp_path / "face16.png").write_bytes(png16)
    np.testing.assert_array_equal(read_image(tmp_path / "face16.png")[..., 0], face)
    np.testing.assert_array_equal(as_array(Image.open(io.BytesIO(png16)))[..., 1], face)
    np.testing.assert_array_equal(decode_bytes(png16)[..., 1], face)
    np.testing.assert_array_equal(to_gray(Image.open(io.BytesIO(png16))), face)
    np.testing.assert_array_equal(decode_image(png16)[..., 2], face)


def test_csv_with_a_huge_field_or_bad_bytes_names_file_and_row(tmp_path, fer_slice, capsys):
    rows = _rows(fer_slice, range(6))
    path = tmp_path / "fer2013.csv"
    path.write_bytes(_csv(FER_CSV_HEADER, rows[:3] + [{"emotion": 0, "pixels": "1" * (17 * 2**20), "Usage": "Training"}] + rows[3:]))
    with pytest.raises(DataError, match=r"fer2013.csv row 5: unreadable CSV \(field larger than field limit"):
        read_fer2013(path)
    assert main(["data", str(path), "--skip-bad", "--no-cache"]) == 2
    assert "fer2013.csv row 5: unreadable CSV" in capsys.readouterr().err

    raw = _csv(FER_CSV_HEADER, rows)
    at = raw.index(b"\n", raw.index(b"\n", raw.index(b"\n") + 1) + 1) + 5  # inside row 4's pixels
    path.write_bytes(raw[:at] + b"\xff\xfe" + raw[at:])
    with pytest.raises(DataError, match="fer2013.csv row 4: not UTF-8 text"):
        read_fer2013(path)
    data = read_fer2013(path, skip_bad=True)
    assert len(data) == 5 and data.skipped == [data.skipped[0]] and "row 4: not UTF-8" in data.skipped[0]


def _deny(monkeypatch, paths: set[Path], folders: bool):
    """Make `paths` unreadable: chmod 000 where that binds (not root), else the same PermissionError simulated
    at the system call the reader makes (os.scandir for folders, Path.read_bytes for files)."""
    import os
    if os.geteuid() != 0:
        for p in paths:
            p.chmod(0)  # the test restores the permissions
        return
    if folders:
        real = os.scandir

        def scandir(path="."):
            if Path(path) in paths:
                raise PermissionError(13, "Permission denied", str(path))
            return real(path)
        monkeypatch.setattr(os, "scandir", scandir)
    else:
        real_read = Path.read_bytes

        def read_bytes(self):
            if self in paths:
                raise PermissionError(13, "Permission denied", str(self))
            return real_read(self)
        monkeypatch.setattr(Path, "read_bytes", read_bytes)


def test_unreadable_folder_or_file_is_named_not_skipped_silently(fer_folder, tmp_path, monkeypatch, capsys):
    root = tmp_path / "fer2013"
    shutil.copytree(fer_folder, root)
    sad = root / "train" / "sad"
    try:
        _deny(monkeypatch, {sad}, folders=True)
        assert main(["data", str(root), "--no-cache"]) == 2
        err = capsys.readouterr().err
        assert f"{sad}: cannot list this folder (Permission denied)" in err and "Traceback" not in err
    finally:
        sad.chmod(0o755)
        monkeypatch.undo()

    face = sorted((root / "train" / "happy").iterdir())[0]
    try:
        _deny(monkeypatch, {face}, folders=False)
        assert main(["data", str(root), "--no-cache"]) == 2
        err = capsys.readouterr().err
        assert f"train/happy/{face.name}: cannot read (Permission denied)" in err and "Traceback" not in err
        assert main(["data", str(root), "--no-cache", "--skip-bad"]) == 0
        assert "skipped bad rows: 1" in capsys.readouterr().out
    finally:
        face.chmod(0o644)


def test_banded_pixel_copies_equal_whole_image_conversions(fer_slice):
    """Big images are copied out of PIL a band of rows at a time (so a server's other threads are not stalled
    behind one long copy); the result must be exactly what one whole-image copy or conversion gives, in every
    mode, and EXIF rotation must still be applied."""
    from ferlab.data.images import BAND_BYTES, rgb_to_gray, to_array, upright_rgb
    faces = fer_slice["pixels"][:64]
    mosaic = np.concatenate([np.concatenate(list(faces[r * 8:(r + 1) * 8]), axis=1) for r in range(8)])
    big = np.tile(mosaic, (3, 5))  # 1152 x 1920: several bands in every mode
    rgb = np.stack([big, np.roll(big, 7, axis=1), 255 - big], axis=-1)
    assert big.size > 2 * BAND_BYTES / 4
    images = {"L": Image.fromarray(big), "RGB": Image.fromarray(rgb), "RGBA": Image.fromarray(rgb).convert("RGBA"),
              "1": Image.fromarray(big).convert("1"), "P": Image.fromarray(rgb).convert("P"),
              "F": Image.fromarray(big.astype(np.float32) / 255)}
    for mode, im in images.items():
        np.testing.assert_array_equal(to_array(im), np.asarray(im), err_msg=mode)
    np.testing.assert_array_equal(rgb_to_gray(rgb), np.asarray(Image.fromarray(rgb).convert("L")))

    buf = io.BytesIO()
    exif = Image.Exif()
    exif[0x0112] = 6  # stored sideways: rotate 270 degrees to view
    Image.fromarray(rgb).save(buf, format="PNG", exif=exif)
    np.testing.assert_array_equal(upright_rgb(Image.open(buf)), np.rot90(rgb, -1))
    buf = io.BytesIO()
    Image.fromarray(big).save(buf, format="PNG")
    np.testing.assert_array_equal(upright_rgb(Image.open(buf)), np.repeat(big[..., None], 3, axis=-1))
