"""The test suite's own data contract (tests/conftest.py): without FER2013 the tests that need real faces skip with
one line saying how to run them, FERLAB_REQUIRE_DATA=1 turns that into a failure, and FERLAB_TEST_DATA takes any
form ferlab reads (here a fer2013.csv: names and JPEGs made up from the rows)."""
from __future__ import annotations

import csv
import io
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
from PIL import Image

REPO = Path(__file__).resolve().parents[1]
NEEDS_DATA = "tests/test_data.py::test_slice_has_every_usage_and_class"  # uses fer_slice, nothing else


def _pytest(data: str, *args: str, require: bool = False) -> subprocess.CompletedProcess:
    env = {**os.environ, "FERLAB_TEST_DATA": data}
    env.pop("FERLAB_REQUIRE_DATA", None)
    if require:
        env["FERLAB_REQUIRE_DATA"] = "1"
    return subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", *args], cwd=REPO,
                          env=env, capture_output=True, text=True, timeout=600)


def test_without_data_the_face_tests_skip_with_one_line_saying_how(tmp_path):
    missing = str(tmp_path / "nowhere" / "fer2013.tar.gz")
    proc = _pytest(missing, NEEDS_DATA, "tests/test_data.py::test_missing_path")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "1 passed, 1 skipped" in proc.stdout
    lines = [ln for ln in proc.stdout.splitlines() if "FERLAB_TEST_DATA" in ln]
    assert len(lines) == 1, proc.stdout
    assert lines[0].startswith("1 tests skipped: no FER2013 at " + missing)
    assert "folder, .zip, .tar.gz, fer2013.csv or icml_face_data.csv" in lines[0]
    assert "Traceback" not in proc.stdout + proc.stderr


def test_require_data_turns_the_skip_into_a_failure(tmp_path):
    proc = _pytest(str(tmp_path / "nowhere.zip"), NEEDS_DATA, require=True)
    assert proc.returncode == 1
    assert "1 error" in proc.stdout and "FERLAB_REQUIRE_DATA=1 says this machine must have it" in proc.stdout


def test_a_fer2013_csv_serves_as_test_data(tmp_path, fer_slice):
    """The slice written back as fer2013.csv rows is a full test data set: the fixture's cells are all there, and
    tests that write its JPEGs into a folder read back its pixels."""
    path = tmp_path / "fer2013.csv"
    buf = io.StringIO()
    w = csv.writer(buf)
    w.writerow(["emotion", "pixels", "Usage"])
    for px, lab, u in zip(fer_slice["pixels"], fer_slice["labels"], fer_slice["usage"]):
        w.writerow([int(lab), " ".join(map(str, px.ravel())), u])
    path.write_text(buf.getvalue())
    proc = _pytest(str(path), NEEDS_DATA, "tests/test_data.py::test_every_form_reads_the_same_faces",
                   "tests/test_testdata.py::test_slice_names_follow_the_kaggle_layout_and_jpegs_decode_to_the_pixels",
                   require=True)
    assert proc.returncode == 0, proc.stdout[-3000:]
    assert "skipped" not in proc.stdout


def test_slice_names_follow_the_kaggle_layout_and_jpegs_decode_to_the_pixels(fer_slice):
    """Whatever the form (a CSV's rows too, in the test above), every name is split/<class>/<Usage>_<n>.jpg and every JPEG decodes to its pixels."""
    from ferlab.data import CLASSES
    for name, raw, px, lab, u in zip(fer_slice["names"], fer_slice["jpeg"], fer_slice["pixels"],
                                     fer_slice["labels"], fer_slice["usage"]):
        split, cls, fname = name.split("/")
        assert (split, cls) == ("train" if u == "Training" else "test", CLASSES[lab]) and fname.startswith(u + "_")
        np.testing.assert_array_equal(np.asarray(Image.open(io.BytesIO(raw)).convert("L")), px)
