"""`ferlab interpolate`: a new run whose weights lie on the line between two runs of one network; it is a run
like any other (calibrate, eval, package), and what cannot be interpolated is one line that says why."""
from __future__ import annotations

import json

import pytest
import torch

from conftest import quick_calibrated_run

from ferlab.cli import main
from ferlab.engine import load_checkpoint, model_from_checkpoint
from ferlab.engine.checkpoint import file_sha256
from ferlab.engine.interpolate import interpolate_checkpoints


@pytest.fixture(scope="module")
def first_run(fer_folder, tmp_path_factory):
    """simple_cnn_v2 (it has batch norm), two quick epochs, calibrated."""
    return quick_calibrated_run(fer_folder, tmp_path_factory.mktemp("first"), "first", "simple_cnn_v2", seed=4)


@pytest.fixture(scope="module")
def sibling_run(fer_folder, tmp_path_factory):
    """The same network as `first_run`, another seed: other weights."""
    return quick_calibrated_run(fer_folder, tmp_path_factory.mktemp("sibling"), "sibling", "simple_cnn_v2", seed=5)


def _logits(ckpt: dict, faces: torch.Tensor) -> torch.Tensor:
    from ferlab.engine.trainer import to_model_input
    net, pre = model_from_checkpoint(ckpt, calibrated=False)
    with torch.no_grad():
        return net(to_model_input(faces, pre, torch.device("cpu")))


def test_ends_and_midpoint(first_run, sibling_run, fer_slice):
    """alpha 0 answers as the first run, 1 as the second; 0.5 holds the mean of every weight and running
    statistic, answers unlike either end, and keeps no temperature (it must be fitted again)."""
    a, b = load_checkpoint(first_run), load_checkpoint(sibling_run)
    faces = torch.from_numpy(fer_slice["pixels"][:48])
    assert torch.allclose(_logits(interpolate_checkpoints(a, b, 0.0), faces), _logits(a, faces), atol=1e-5)
    assert torch.allclose(_logits(interpolate_checkpoints(a, b, 1.0), faces), _logits(b, faces), atol=1e-5)
    mid = interpolate_checkpoints(a, b, 0.5)
    wa, wb = a.get("ema_state_dict") or a["state_dict"], b.get("ema_state_dict") or b["state_dict"]
    floats = [k for k, v in wb.items() if v.is_floating_point()]
    assert any("running_mean" in k for k in floats)
    for k in floats:
        assert torch.allclose(mid["state_dict"][k], (wa[k].float() + wb[k].float()) / 2, atol=1e-6), k
    assert not torch.allclose(wa[floats[0]], wb[floats[0]])  # two different ends: a real average
    got = _logits(mid, faces)
    assert not torch.allclose(got, _logits(a, faces), atol=1e-3) and not torch.allclose(got, _logits(b, faces), atol=1e-3)
    assert mid["temperature"] is None and mid["ema_state_dict"] is None and mid["optimizer"] is None


def test_cli_writes_a_run_that_calibrates_and_evaluates(first_run, sibling_run, fer_folder, tmp_path, capsys):
    out = tmp_path / "mid"
    assert main(["interpolate", str(first_run), str(sibling_run), "--alpha", "0.3", "--out", str(out)]) == 0
    assert "ferlab calibrate" in capsys.readouterr().out
    record = json.loads((out / "interpolation.json").read_text())
    assert record["alpha"] == 0.3 and record["first_sha256"] == file_sha256(first_run / "best.pt")
    assert load_checkpoint(out)["interpolation"] == record and "first_interpolation" not in record
    chained = tmp_path / "chained"  # an interpolation of an interpolation names every checkpoint it mixed
    assert main(["interpolate", str(out), str(sibling_run), "--alpha", "0.5", "--out", str(chained)]) == 0
    outer = json.loads((chained / "interpolation.json").read_text())
    assert outer["first_interpolation"] == record and "second_interpolation" not in outer
    assert outer["first_sha256"] == file_sha256(out / "best.pt")
    assert main(["calibrate", str(out), "--data", str(fer_folder)]) == 0
    assert load_checkpoint(out)["temperature"] > 0
    capsys.readouterr()
    assert main(["eval", str(out), "--split", "val", "--data", str(fer_folder)]) == 0
    assert "accuracy" in capsys.readouterr().out


def test_what_cannot_be_interpolated_is_one_line(first_run, sibling_run, calibrated_run, tmp_path, capsys):
    """Another network, an alpha outside [0, 1] and an output folder that holds files are refused before
    anything is written; the files already there are left as they were."""
    assert main(["interpolate", str(first_run), str(calibrated_run), "--out", str(tmp_path / "x")]) == 2
    err = capsys.readouterr().err
    assert "not one network" in err and err.count("\n") == 1 and not (tmp_path / "x").exists()
    assert main(["interpolate", str(first_run), str(sibling_run), "--alpha", "1.5",
                 "--out", str(tmp_path / "y")]) == 2
    assert "outside [0, 1]" in capsys.readouterr().err and not (tmp_path / "y").exists()
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "best.pt").write_bytes(b"my own run")
    assert main(["interpolate", str(first_run), str(sibling_run), "--out", str(mine)]) == 2
    assert "already exists" in capsys.readouterr().err
    assert (mine / "best.pt").read_bytes() == b"my own run" and sorted(p.name for p in mine.iterdir()) == ["best.pt"]
