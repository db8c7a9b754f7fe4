"""`--model ensemble`: calibrated runs packaged as one network whose probabilities are the mean of theirs,
calibrated once more as a whole on the validation split; every consumer of a checkpoint takes it."""
from __future__ import annotations

import numpy as np
import pytest
import torch

import ferlab
from ferlab.cli import main
from conftest import quick_calibrated_run

from ferlab.engine import load_checkpoint, model_from_checkpoint
from ferlab.engine.package import package_ensemble, unpack_ensemble


@pytest.fixture(scope="module")
def second_run(fer_folder, tmp_path_factory):
    """A second calibrated run beside conftest's `calibrated_run`: same preprocessing, another seed and net."""
    return quick_calibrated_run(fer_folder, tmp_path_factory.mktemp("second"), "second", "simple_cnn_v2", seed=4)


@pytest.fixture(scope="module")
def ensemble(calibrated_run, second_run, fer_folder, tmp_path_factory):
    path = tmp_path_factory.mktemp("ensemble") / "ensemble.pt"
    written, record = package_ensemble([calibrated_run, second_run], path, data=str(fer_folder), device="cpu")
    assert written == path and record["split"] == "val" and record["tta"] == "flip"
    return path


def test_ensemble_is_the_calibrated_mean_of_its_members(ensemble, calibrated_run, second_run, fer_slice):
    """Its probabilities: softmax(log(mean of the members' calibrated probabilities) / T), T its own (fitted on
    the validation split), within what fp16 storage of the weights moves; stored in fp16, half the bytes."""
    ckpt = load_checkpoint(ensemble)
    assert all(v.dtype == torch.float16 for v in ckpt["state_dict"].values() if v.is_floating_point())
    assert ckpt["model_args"]["members"][0]["model"] == "simple_cnn" and ckpt["temperature"] > 0
    faces = torch.from_numpy(fer_slice["pixels"][:64])
    from ferlab.engine.trainer import to_model_input
    means = []
    for run in (calibrated_run, second_run):
        member, pre = model_from_checkpoint(load_checkpoint(run))
        with torch.no_grad():
            means.append(member(to_model_input(faces, pre, torch.device("cpu"))).softmax(1))
    want = ((torch.stack(means).mean(0).log()) / ckpt["temperature"]).softmax(1)
    net, pre = model_from_checkpoint(ckpt)
    with torch.no_grad():
        got = net(to_model_input(faces, pre, torch.device("cpu"))).softmax(1)
    assert torch.allclose(got, want, atol=5e-3), (got - want).abs().max()
    assert (got.argmax(1) == want.argmax(1)).float().mean() >= 0.95
    assert not torch.allclose(means[0], means[1], atol=1e-2)  # two members that disagree: a real average


def test_ensemble_runs_wherever_a_model_is_chosen(ensemble, fer_folder, fer_slice, tmp_path, monkeypatch, capsys):
    """`--model ensemble` (the packaged file), eval, predict, the Python API and the ONNX export all take it;
    while none is packaged the name is one clear line."""
    import ferlab.weights as weights
    monkeypatch.setattr(weights, "ENSEMBLE_WEIGHTS", tmp_path / "missing.pt")
    assert main(["predict", str(fer_folder), "--model", "ensemble", "--detector", "none"]) == 2
    assert "the ensemble model is not packaged" in capsys.readouterr().err
    monkeypatch.setattr(weights, "ENSEMBLE_WEIGHTS", ensemble)
    p = ferlab.Predictor("ensemble", detector="none")
    faces = p.predict(fer_slice["pixels"][0])
    assert len(faces) == 1 and sum(faces[0]["probs"].values()) == pytest.approx(1, abs=1e-3)
    assert main(["eval", "ensemble", "--split", "val", "--data", str(fer_folder)]) == 0
    assert "accuracy" in capsys.readouterr().out
    onnx = tmp_path / "ensemble.onnx"
    assert main(["export", "ensemble", "--output", str(onnx), "--data", str(fer_folder)]) == 0
    capsys.readouterr()
    q = ferlab.Predictor(str(onnx), detector="none")
    got = q.predict(fer_slice["pixels"][0])[0]["probs"]
    assert np.allclose(list(got.values()), list(faces[0]["probs"].values()), atol=2e-3)


def test_ensemble_members_must_be_calibrated_and_alike(calibrated_run, fer_folder, tmp_path):
    with pytest.raises(ValueError, match="at least two runs"):
        package_ensemble([calibrated_run], tmp_path / "e.pt", data=str(fer_folder))
    raw = load_checkpoint(calibrated_run)
    uncalibrated = tmp_path / "u.pt"
    torch.save({**raw, "temperature": None}, uncalibrated)
    with pytest.raises(ValueError, match="no temperature fitted"):
        package_ensemble([calibrated_run, uncalibrated], tmp_path / "e.pt", data=str(fer_folder))
    other = tmp_path / "o.pt"
    torch.save({**raw, "preprocess": {**raw["preprocess"], "standardize": False}}, other)
    with pytest.raises(ValueError, match="preprocessing differ"):
        package_ensemble([calibrated_run, other], tmp_path / "e.pt", data=str(fer_folder))
    assert not (tmp_path / "e.pt").exists()


def test_unpacked_members_are_the_ensembles_own_and_repack_into_it(ensemble, calibrated_run, second_run, fer_folder,
                                                                   fer_slice, tmp_path, capsys):
    """`python -m ferlab.weights --unpack`: each member as a checkpoint of its own, named after its run, with the
    ensemble's fp16 weights (exactly) and its own temperature; packed again they give the ensemble's probabilities
    and keep the names of the runs they came from.
    A file already there is never overwritten; a model that is not an ensemble, or a call without --out, is one
    clear line."""
    import subprocess
    import sys
    out = tmp_path / "members"
    paths = unpack_ensemble(ensemble, out)
    assert [p.name for p in paths] == [f"{calibrated_run.name}.pt", f"{second_run.name}.pt"]
    packed = load_checkpoint(ensemble)["state_dict"]
    from ferlab.engine.trainer import to_model_input
    faces = torch.from_numpy(fer_slice["pixels"][:64])
    for i, (path, run) in enumerate(zip(paths, (calibrated_run, second_run))):
        one = load_checkpoint(path)
        assert one["model"] == load_checkpoint(run)["model"] and one["source_run"] == str(run)
        assert one["temperature"] == pytest.approx(load_checkpoint(run)["temperature"], rel=1e-3)
        for k, v in one["state_dict"].items():  # float32 again, holding the fp16 values exactly
            assert v.dtype != torch.float16 and torch.equal(v, packed[f"members.{i}.{k}"].to(v.dtype)), k
    again, _ = package_ensemble(paths, tmp_path / "again.pt", data=str(fer_folder), device="cpu")
    assert load_checkpoint(again)["members"] == [str(calibrated_run), str(second_run)]  # the runs, not the files
    probs = []
    for path in (ensemble, again):
        net, pre = model_from_checkpoint(load_checkpoint(path))
        with torch.no_grad():
            probs.append(net(to_model_input(faces, pre, torch.device("cpu"))).softmax(1))
    assert torch.allclose(probs[0], probs[1], atol=2e-3), (probs[0] - probs[1]).abs().max()
    mine = paths[1].read_bytes()
    paths[0].unlink()
    with pytest.raises(ValueError, match=f"{paths[1]} already exist"):  # one file there: nothing is written
        unpack_ensemble(ensemble, out)
    assert not paths[0].exists() and paths[1].read_bytes() == mine
    with pytest.raises(ValueError, match="not an ensemble"):
        unpack_ensemble(calibrated_run, tmp_path / "x")
    r = subprocess.run([sys.executable, "-m", "ferlab.weights", "--unpack", str(ensemble)], capture_output=True,
                       text=True)
    assert r.returncode == 2 and "--unpack takes one ensemble and --out DIR" in r.stderr
