"""Temperature scaling and the expected calibration error: known answers, then real runs and the CLI."""
from __future__ import annotations

import shutil

import pytest
import torch

from ferlab.cli import main
from ferlab.engine.calibration import (TemperatureScaled, expected_calibration_error, fit_temperature,
                                       reliability)


def test_fit_temperature_recovers_the_temperature_that_drew_the_labels():
    gen = torch.Generator().manual_seed(0)
    logits = 3 * torch.randn(8000, 7, generator=gen)
    for t in (0.5, 1.0, 2.5):  # labels drawn from softmax(logits / t): that t is the calibrated temperature
        labels = torch.multinomial((logits / t).softmax(1), 1, generator=gen)[:, 0]
        assert fit_temperature(logits, labels) == pytest.approx(t, rel=0.08)
        # two identical views average to the same probabilities: the same temperature
        assert fit_temperature(torch.stack([logits, logits]), labels) == pytest.approx(t, rel=0.08)


def test_fit_temperature_rejects_mismatched_shapes():
    with pytest.raises(ValueError, match="expected logits"):
        fit_temperature(torch.zeros(2, 5, 7), torch.zeros(4, dtype=torch.long))


def test_ece_and_reliability_by_hand():
    # ten faces at confidence 0.7: seven right is calibrated, four right is 30 points over-confident
    probs = torch.tensor([[0.7, 0.3]] * 10)
    right7 = torch.tensor([0] * 7 + [1] * 3)
    right4 = torch.tensor([0] * 4 + [1] * 6)
    assert expected_calibration_error(probs, right7) == pytest.approx(0.0, abs=1e-4)
    assert expected_calibration_error(probs, right4) == pytest.approx(30.0, abs=1e-4)
    r = reliability(probs, right4)
    assert len(r["count"]) == 15 and sum(r["count"]) == 10 and r["count"][10] == 10  # 0.7 lies in (0.667, 0.733]
    assert r["accuracy"][10] == pytest.approx(0.4) and r["confidence"][10] == pytest.approx(0.7)
    # two bins: half the faces calibrated at 0.6, half 40 points under-confident at 0.6 -> ECE 20
    probs = torch.tensor([[0.6, 0.4]] * 10 + [[0.95, 0.05]] * 10)
    labels = torch.tensor([0] * 6 + [1] * 4 + [0] * 10)  # the 0.95 group is all right: gap 5 points
    assert expected_calibration_error(probs, labels) == pytest.approx((0 * 10 + 5 * 10) / 20, abs=1e-4)


def test_temperature_scaled_divides_logits_and_keeps_predictions():
    net = torch.nn.Linear(4, 7)
    x = torch.randn(16, 4)
    scaled = TemperatureScaled(net, 2.0)
    torch.testing.assert_close(scaled(x), net(x) / 2)
    assert torch.equal(scaled(x).argmax(1), net(x).argmax(1))
    with pytest.raises(ValueError, match="temperature must be > 0"):
        TemperatureScaled(net, 0.0)


def test_calibrate_cli_fits_on_val_and_writes_the_checkpoint(calibrated_run, fer_folder, tmp_path, capsys):
    run = tmp_path / "run"
    shutil.copytree(calibrated_run, run)
    before = torch.load(run / "best.pt", weights_only=True)
    assert main(["calibrate", str(run), "--data", str(fer_folder), "--tta", "none", "--device", "cpu"]) == 0
    out = capsys.readouterr().out
    after = torch.load(run / "best.pt", weights_only=True)
    assert f"temperature {after['temperature']:.3f}" in out and "validation split (168 faces, TTA none)" in out
    assert after["calibration"]["tta"] == "none" and after["calibration"]["split"] == "val"
    assert after["calibration"]["nll_after"] <= after["calibration"]["nll_before"] + 1e-9
    for k, v in before["state_dict"].items():  # only the temperature changed
        assert torch.equal(v, after["state_dict"][k])
    assert main(["calibrate", "default"]) == 2
    assert "calibrate its run folder" in capsys.readouterr().err
    assert main(["calibrate", str(tmp_path / "missing")]) == 2


def test_package_model_needs_a_temperature_and_keeps_it(calibrated_run, tmp_path):
    from ferlab.engine.checkpoint import load_checkpoint, write_checkpoint
    from ferlab.engine.package import package_model
    out = package_model(calibrated_run, tmp_path / "shipped.pt")
    shipped, best = load_checkpoint(out), load_checkpoint(calibrated_run)
    assert shipped["temperature"] == best["temperature"] and shipped["optimizer"] is None
    assert shipped["source_run"] == str(calibrated_run)
    again = load_checkpoint(package_model(out, tmp_path / "shipped16.pt", half=True))  # repacked in fp16
    assert again["source_run"] == str(calibrated_run) and again["temperature"] == best["temperature"]
    assert all(v.dtype == torch.float16 for v in again["state_dict"].values() if v.is_floating_point())
    raw = {k: v for k, v in best.items() if k not in ("temperature", "calibration")}
    write_checkpoint(tmp_path / "raw.pt", raw)
    with pytest.raises(ValueError, match="ferlab calibrate"):
        package_model(tmp_path / "raw.pt", tmp_path / "x.pt")


def test_packaged_model_keeps_only_the_weights_it_answers_with(calibrated_run, fer_slice, tmp_path):
    """A run with EMA weights is packaged with those alone (the raw training weights dropped); --half stores them
    in fp16, and the packaged model answers as the run does. `python -m ferlab.weights --robust` packages so."""
    import subprocess
    import sys

    from ferlab.engine.checkpoint import load_checkpoint, model_from_checkpoint, write_checkpoint
    from ferlab.engine.predict import predict_probs
    best = load_checkpoint(calibrated_run)
    ema = {k: v * 0.9 if v.is_floating_point() and "running" not in k else v for k, v in best["state_dict"].items()}
    write_checkpoint(tmp_path / "ema.pt", {**best, "ema_state_dict": ema})
    out = tmp_path / "robust.pt"
    r = subprocess.run([sys.executable, "-m", "ferlab.weights", "--robust", str(tmp_path / "ema.pt"), "--out", str(out)],
                       capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    shipped = load_checkpoint(out)
    assert shipped["ema_state_dict"] is None and shipped["optimizer"] is None
    for k, v in ema.items():
        if v.is_floating_point():
            assert shipped["state_dict"][k].dtype == torch.float16
            torch.testing.assert_close(shipped["state_dict"][k].float(), v, atol=1e-2, rtol=1e-3)
    faces = torch.from_numpy(fer_slice["pixels"][:64])
    probs = [predict_probs(model, faces, pre, torch.device("cpu"))
             for model, pre in (model_from_checkpoint(c) for c in (load_checkpoint(tmp_path / "ema.pt"), shipped))]
    assert (probs[0].argmax(1) == probs[1].argmax(1)).float().mean() >= 0.95
    torch.testing.assert_close(probs[1], probs[0], atol=1e-2, rtol=0)
    r = subprocess.run([sys.executable, "-m", "ferlab.weights", "--robust", "--ensemble", "a", "b"],
                       capture_output=True, text=True)
    assert r.returncode == 2 and "--robust packages one 7-class run" in r.stderr


def test_logit_adjustment_is_the_smallest_that_reaches_the_recall():
    from ferlab.engine.calibration import TAUS, fit_logit_adjustment, recall
    gen = torch.Generator().manual_seed(1)
    labels = torch.tensor([0] * 900 + [1] * 100)
    prior = torch.tensor([0.9, 0.1])
    logits = torch.randn(1000, 2, generator=gen)
    logits[:, 0] += 1.5  # the model leans to the frequent class: class 1 recall is low at tau 0
    base = recall(logits.softmax(1), labels, 1)
    tau = fit_logit_adjustment(logits[None], labels, prior, {1: 60.0})
    adjusted = (logits - tau * prior.log()).softmax(1)
    assert base < 60 <= recall(adjusted, labels, 1)
    smaller = TAUS[TAUS.index(tau) - 1]
    assert recall((logits - smaller * prior.log()).softmax(1), labels, 1) < 60  # the smallest that does it
    with pytest.raises(ValueError, match="ask for less"):
        fit_logit_adjustment(logits[None], labels, prior, {1: 100.0, 0: 100.0})


def test_calibrate_cli_min_recall_stores_the_bias(calibrated_run, fer_folder, tmp_path, capsys):
    """The CLI path end to end. The test slice is class-balanced (uniform prior, so any tau leaves the
    decisions alone): a recall already met gives tau 0 and a zero bias, an unreachable one is refused."""
    from ferlab.engine.checkpoint import load_checkpoint, model_from_checkpoint
    run = tmp_path / "run"
    shutil.copytree(calibrated_run, run)
    assert main(["calibrate", str(run), "--data", str(fer_folder), "--min-recall", "happy=1",
                 "--device", "cpu"]) == 0
    out = capsys.readouterr().out
    ckpt = load_checkpoint(run)
    r = ckpt["calibration"]
    assert "logit adjustment tau 0.00" in out and r["logit_adjustment_tau"] == 0 and r["min_recall"] == {"happy": 1}
    assert len(ckpt["logit_bias"]) == 7 and r["val_recall_after"][3] >= 1
    model, _ = model_from_checkpoint(ckpt)
    assert torch.allclose(model.bias, torch.tensor(ckpt["logit_bias"]))
    assert main(["calibrate", str(run), "--data", str(fer_folder), "--min-recall", "disgust=101"]) == 2
    assert "ask for less" in capsys.readouterr().err
    assert main(["calibrate", str(run), "--min-recall", "disgust"]) == 2
    assert "expected CLASS=PERCENT" in capsys.readouterr().err
