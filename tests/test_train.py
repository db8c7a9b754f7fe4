"""The training engine on real FER2013 faces: learning, run folders, checkpoints, resume, eval, report, CLI.

Every run is tiny (one thread, a small seed CNN, 48 px, a few epochs) so the file runs in well under a minute.
"""
from __future__ import annotations

import csv
import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from PIL import Image

from ferlab.cli import main
from ferlab.data import CLASSES, USAGES, load_fer2013, make_splits
from ferlab.engine import TrainConfig, evaluate, fit, load_checkpoint, model_from_checkpoint, predict_probs
from ferlab.engine.predict import predict_probs_tta, tta_views
from ferlab.engine.callbacks import METRIC_KEYS
from ferlab.engine.evaluation import evaluate_checkpoints
from ferlab.engine.metrics import classification_report
from ferlab.engine.report import COLUMNS
from ferlab.engine import trainer
from ferlab.engine.trainer import build_preprocess
from ferlab.models import count_params

SEED_COLUMNS = ("train_loss", "train_accuracy", "val_loss", "val_accuracy", "train_val_acc_gap")
NO_AUGMENT = dict(hflip=0.0, rotate=0.0, scale=0.0, translate=0.0, erase=0.0)
TIMING = ("epoch_time_s", "images_per_s")  # the only columns allowed to differ between identical runs


@pytest.fixture(scope="module", autouse=True)
def _restore_threads():
    """fit applies the config's threads=1 to the whole test process; give later test files their threads back."""
    n = torch.get_num_threads()
    yield
    torch.set_num_threads(n)


def tiny_config(data, out_dir, **over) -> TrainConfig:
    """Two quick epochs of simple_cnn at 1x48x48 on half of the 7-class slice (84 faces per split)."""
    values = dict(name="tiny", model="simple_cnn", input_size=48, in_channels=1, mean=[0.0], std=[1.0],
                  standardize=True, data=data and str(data), split="official", fraction=0.5, seed=1, epochs=2,
                  batch_size=16, optimizer="adam", lr=1e-3, weight_decay=0.0, schedule="constant",
                  warmup_epochs=0, augment=dict(hflip=0.5, rotate=5.0, scale=0.05, translate=0.05, erase=0.25),
                  threads=1, device="cpu", tta=True, out_dir=str(out_dir))
    return TrainConfig(**{**values, **over})


def _rows(run_dir: Path) -> list[dict]:
    with (run_dir / "metrics.csv").open() as f:
        return list(csv.DictReader(f))


def _assert_same_metrics(run_a: Path, run_b: Path, epochs: int = 2) -> None:
    """Both runs logged the same per-epoch metrics (all but the timings)."""
    a, b = _rows(run_a), _rows(run_b)
    assert len(a) == len(b) == epochs
    for ra, rb in zip(a, b):
        for k in METRIC_KEYS:
            if k not in TIMING:
                assert float(ra[k]) == pytest.approx(float(rb[k]), abs=1e-4), (k, ra, rb)


def _is_png(path: Path) -> bool:
    with Image.open(path) as im:
        return im.format == "PNG" and min(im.size) > 100


@pytest.fixture(scope="module")
def runs(fer_folder, tmp_path_factory):
    """Two finished tiny runs under the same name (different seeds): the second must land in tiny-2."""
    out = tmp_path_factory.mktemp("runs")
    first = fit(tiny_config(fer_folder, out), progress=False)
    second = fit(tiny_config(fer_folder, out, seed=2), progress=False)
    return out / first["name"], out / second["name"]


# ----------------------------------------------------------------------------------------------- learning

@pytest.fixture(scope="module")
def two_class_folder(fer_data, tmp_path_factory) -> Path:
    """happy vs surprise in the Kaggle folder layout: 200 Training faces per class, 60 PublicTest and 60
    PrivateTest (the first of each, in the order ferlab's reader gives them; PNG files, their pixels exactly).
    fer_slice's 24 faces per class are too few to tell learning from luck, so this takes more real faces."""
    root = tmp_path_factory.mktemp("two-class") / "fer2013"
    want = {"Training": 200, "PublicTest": 60, "PrivateTest": 60}
    taken: dict = {}
    for i, (lab, u) in enumerate(zip(fer_data.labels.tolist(), fer_data.usage.tolist())):
        if lab < 0 or CLASSES[lab] not in ("happy", "surprise"):
            continue
        key = (USAGES[u], CLASSES[lab])
        if taken.get(key, 0) >= want.get(key[0], 0):
            continue
        taken[key] = taken.get(key, 0) + 1
        p = root / ("train" if key[0] == "Training" else "test") / key[1] / f"{key[0]}_{i}.png"
        p.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(fer_data.images[i]).save(p)
        if sum(taken.values()) == 2 * sum(want.values()):
            break
    assert len(taken) == 6 and min(taken.values()) == 60, taken
    return root


def _learn(data, out, lr) -> dict:
    cfg = tiny_config(data, out, name=f"two-lr{lr}", fraction=1.0, epochs=6, batch_size=32, lr=lr,
                      augment=dict(NO_AUGMENT, hflip=0.5), tta=False)
    return fit(cfg, progress=False)


def test_short_training_learns_happy_vs_surprise(two_class_folder, tmp_path):
    """Chance is 50% on this two-class split (and a model that never learns scores far below, spreading its
    guesses over 7 classes). Six epochs reach 73-76% on PublicTest (67-77% on PrivateTest) for seeds 1, 2, 3
    and 5; lr=0 stays below 35%."""
    learned = _learn(two_class_folder, tmp_path, 1e-3)
    assert learned["val_accuracy"] >= 70.0, learned
    assert learned["test_accuracy"] >= 62.0, learned  # best.pt on PrivateTest, never used for any choice
    frozen = _learn(two_class_folder, tmp_path, 0.0)
    assert frozen["val_accuracy"] < 60.0, frozen


# ----------------------------------------------------------------------------------------------- run folder

def test_run_folder_contents(runs, fer_folder):
    run, _ = runs
    cfg = yaml.safe_load((run / "config.yaml").read_text())
    assert cfg["model"] == "simple_cnn" and cfg["epochs"] == 2 and "blur" not in cfg
    assert cfg["augment"]["erase"] == 0.25 and cfg["data"] == str(fer_folder)
    assert cfg["weight_decay"] == 0.0 and cfg["momentum"] == TrainConfig.momentum  # resolved: defaults too
    assert cfg["world_size"] == 1 and cfg["global_batch_size"] == 16

    rows = _rows(run)
    assert [int(r["epoch"]) for r in rows] == [1, 2]
    assert set(SEED_COLUMNS) <= set(rows[0]) and tuple(rows[0]) == METRIC_KEYS
    for r in rows:
        gap = float(r["train_accuracy"]) - float(r["val_accuracy"])
        assert float(r["train_val_acc_gap"]) == pytest.approx(gap, abs=1e-4)
        assert 0 <= float(r["val_accuracy"]) <= 100 and float(r["train_loss"]) > 0

    s = json.loads((run / "summary.json").read_text())
    for key in ("params", "epochs", "train_accuracy", "val_accuracy", "test_accuracy", "gap", "wall_time_s",
                "images_per_s", "val_accuracy_tta", "test_accuracy_tta", "best_epoch"):
        assert s[key] is not None, key
    assert s["epochs"] == 2 and s["name"] == run.name and s["input"] == "1x48x48"
    assert s["gap"] == pytest.approx(s["train_accuracy"] - s["val_accuracy"])
    best_row = rows[s["best_epoch"] - 1]
    assert s["val_accuracy"] == pytest.approx(float(best_row["val_accuracy"]), abs=1e-4)
    assert s["val_accuracy"] == pytest.approx(max(float(r["val_accuracy"]) for r in rows), abs=1e-4)
    assert s["wall_time_s"] > 0 and s["images_per_s"] > 0
    for png in ("curves.png", "confusion_test.png"):
        assert _is_png(run / png), png
    assert (run / "best.pt").exists() and (run / "last.pt").exists()
    assert not [p.name for p in run.iterdir() if ".tmp" in p.name]  # files are written whole, then renamed


def test_summary_records_where_and_with_what_the_run_was_made(runs, monkeypatch):
    run, _ = runs
    s = json.loads((run / "summary.json").read_text())
    head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=Path(trainer.__file__).parent, capture_output=True,
                          text=True).stdout.strip()
    assert len(head) == 40  # the tests run from a git checkout
    assert (s["hosts"], s["world_size"], s["torch"], s["git_commit"]) == \
        ([socket.gethostname()], 1, torch.__version__, head)

    def no_git(*args, **kwargs):
        raise FileNotFoundError("git")
    monkeypatch.setattr(trainer.subprocess, "run", no_git)
    assert trainer.git_commit() is None  # no git: the run goes on, the commit is null


def test_bf16_on_a_cpu_that_only_emulates_it_trains_in_fp32_and_keeps_bf16_for_the_next_machine(
        fer_folder, tmp_path, monkeypatch, capsys):
    """A CPU without AVX512-BF16/AMX runs bf16 autocast about 10x slower than fp32: there a bf16 config computes in
    fp32, identically to an fp32 run, says so, and still asks for bf16 in config.yaml and last.pt, so a resume on
    a CPU that has it gets it back. With native bf16 the run does compute in bf16 (other losses)."""
    from ferlab.engine import predict
    monkeypatch.setattr(predict, "native_bf16", lambda device: False)
    emulated = fit(tiny_config(fer_folder, tmp_path, name="emu", epochs=1, precision="bf16"), progress=False)
    assert "only emulates" in capsys.readouterr().out
    plain = fit(tiny_config(fer_folder, tmp_path, name="fp32", epochs=1, precision="fp32"), progress=False)
    assert "only emulates" not in capsys.readouterr().out
    emu_run, fp32_run = tmp_path / emulated["name"], tmp_path / plain["name"]
    strip = [{k: v for k, v in r.items() if k not in TIMING} for r in _rows(emu_run)]
    assert strip == [{k: v for k, v in r.items() if k not in TIMING} for r in _rows(fp32_run)]
    assert emulated["precision"] == "fp32"  # what this sitting computed in
    assert yaml.safe_load((emu_run / "config.yaml").read_text())["precision"] == "bf16"
    assert load_checkpoint(emu_run / "last.pt")["config"]["precision"] == "bf16"
    monkeypatch.setattr(predict, "native_bf16", lambda device: True)
    native = fit(tiny_config(fer_folder, tmp_path, name="bf16", epochs=1, precision="bf16"), progress=False)
    assert native["precision"] == "bf16"
    assert _rows(tmp_path / native["name"])[0]["train_loss"] != _rows(fp32_run)[0]["train_loss"]


def test_same_name_never_overwrites(runs):
    first, second = runs
    assert first.name == "tiny" and second.name == "tiny-2"
    assert yaml.safe_load((first / "config.yaml").read_text())["seed"] == 1
    assert yaml.safe_load((second / "config.yaml").read_text())["seed"] == 2


# ----------------------------------------------------------------------------------------------- checkpoints

def test_checkpoints_describe_themselves(runs):
    run, _ = runs
    pre = build_preprocess(tiny_config("x", "y"))
    for name in ("best.pt", "last.pt"):
        ckpt = torch.load(run / name, map_location="cpu", weights_only=True)
        assert ckpt["model"] == "simple_cnn" and ckpt["model_args"] == {}
        assert ckpt["preprocess"] == {"input_size": 48, "in_channels": 1, "mean": [0.0], "std": [1.0],
                                      "standardize": True} == pre.to_dict()
        assert ckpt["classes"] == list(CLASSES)
        assert ckpt["config"]["lr"] == 1e-3 and ckpt["config"]["seed"] == 1
    last = torch.load(run / "last.pt", map_location="cpu", weights_only=True)
    assert last["epoch"] == 2 and last["optimizer"]["state"] and last["scheduler"] is not None


def test_model_from_checkpoint_reproduces_the_run(runs, fer_folder):
    """The rebuilt best.pt scores exactly what training recorded on val and what summary.json says on test."""
    run, _ = runs
    ckpt = load_checkpoint(run)  # a run folder means its best.pt
    model, pre = model_from_checkpoint(ckpt)
    assert not model.training and count_params(model) == json.loads((run / "summary.json").read_text())["params"]
    splits = make_splits(load_fer2013(fer_folder), "official", seed=1, fraction=0.5)
    dev = torch.device("cpu")
    xva, yva = torch.from_numpy(splits["val"].images), torch.from_numpy(splits["val"].labels)
    xte, yte = torch.from_numpy(splits["test"].images), torch.from_numpy(splits["test"].labels)
    assert evaluate(model, xva, yva, pre, dev)["accuracy"] == pytest.approx(ckpt["best_val_acc"])
    summary = json.loads((run / "summary.json").read_text())
    assert evaluate(model, xte, yte, pre, dev)["accuracy"] == pytest.approx(summary["test_accuracy"])
    assert evaluate(model, xte, yte, pre, dev, tta=True)["accuracy"] == pytest.approx(summary["test_accuracy_tta"])

    again, _ = model_from_checkpoint(load_checkpoint(run / "best.pt"))
    p1, p2 = predict_probs(model, xte, pre, dev), predict_probs(again, xte, pre, dev)
    assert torch.equal(p1, p2)
    assert not torch.allclose(p1, p1.mean(0, keepdim=True))  # a real, input-dependent model


def test_training_fits_a_temperature_on_val_and_reports_test_ece(runs, fer_folder):
    """best.pt carries a temperature fitted on the validation split (flip TTA, as the Predictor predicts);
    it lowers the validation NLL, keeps the plain predictions, and summary.json reports the test ECE both ways."""
    from ferlab.engine.calibration import TemperatureScaled, expected_calibration_error
    run, _ = runs
    ckpt = load_checkpoint(run)
    cal = ckpt["calibration"]
    assert cal["split"] == "val" and cal["tta"] == "flip" and cal["faces"] == 84
    assert ckpt["temperature"] == cal["temperature"] > 0 and cal["nll_after"] <= cal["nll_before"] + 1e-9
    model, pre = model_from_checkpoint(ckpt)
    raw, _ = model_from_checkpoint(ckpt, calibrated=False)
    assert isinstance(model, TemperatureScaled) and not isinstance(raw, TemperatureScaled)
    test = make_splits(load_fer2013(fer_folder), "official", seed=1, fraction=0.5)["test"]
    x, y = torch.from_numpy(test.images), torch.from_numpy(test.labels)
    dev = torch.device("cpu")
    p_cal, p_raw = predict_probs(model, x, pre, dev), predict_probs(raw, x, pre, dev)
    assert torch.equal(p_cal.argmax(1), p_raw.argmax(1)) and not torch.allclose(p_cal, p_raw)
    summary = json.loads((run / "summary.json").read_text())
    assert summary["temperature"] == pytest.approx(ckpt["temperature"])
    assert summary["test_ece"] == pytest.approx(expected_calibration_error(p_cal, y), abs=1e-6)
    assert summary["test_ece_uncalibrated"] == pytest.approx(expected_calibration_error(p_raw, y), abs=1e-6)


# ----------------------------------------------------------------------------------------------- resume

def test_resume_matches_uninterrupted_run(fer_folder, tmp_path):
    """Stopped after epoch 1 of 2 and resumed, a run ends where the uninterrupted run ends (EMA, dropout,
    augmentation and the optimizer state included)."""
    kw = dict(ema=0.9, augment=dict(hflip=0.5, rotate=5.0, erase=0.5), epochs=2)
    straight = tmp_path / "straight" / fit(tiny_config(fer_folder, tmp_path / "straight", **kw),
                                           progress=False)["name"]

    def stop_after_first(epoch, metrics):
        if epoch == 1:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        fit(tiny_config(fer_folder, tmp_path / "cut", **kw), progress=False, epoch_hook=stop_after_first)
    cut = tmp_path / "cut" / "tiny"
    assert [r["epoch"] for r in _rows(cut)] == ["1"] and not (cut / "summary.json").exists()
    summary = fit(tiny_config(None, tmp_path / "elsewhere"), resume=cut, progress=False)
    assert summary["name"] == "tiny" and not (tmp_path / "elsewhere").exists()  # the run's own config

    _assert_same_metrics(straight, cut)
    la, lb = (torch.load(p / "last.pt", weights_only=True) for p in (straight, cut))
    for part in ("state_dict", "ema_state_dict"):
        for k, v in la[part].items():
            torch.testing.assert_close(v, lb[part][k], rtol=1e-4, atol=1e-5, msg=f"{part} {k}")
    assert json.loads((straight / "summary.json").read_text())["test_accuracy"] == summary["test_accuracy"]


def test_resume_from_last_checkpoint_alone_writes_best_again(fer_folder, tmp_path):
    """A run folder carried to another machine with last.pt but not best.pt (the checkpoint one commits to resume
    elsewhere): the resumed run chooses among the epochs it can still keep and finishes, instead of failing at the
    end for want of a best.pt that a better earlier epoch had written."""
    def stop_after_first(epoch, metrics):
        if epoch == 1:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        fit(tiny_config(fer_folder, tmp_path, epochs=2), progress=False, epoch_hook=stop_after_first)
    cut = tmp_path / "tiny"
    (cut / "best.pt").unlink()
    last = torch.load(cut / "last.pt", weights_only=True)
    torch.save({**last, "best_val_acc": 100.0}, cut / "last.pt")  # an epoch 2 cannot beat: the worst case
    summary = fit(tiny_config(None, tmp_path / "elsewhere"), resume=cut, progress=False)
    assert (cut / "best.pt").exists() and (cut / "summary.json").exists() and summary["best_epoch"] == 2


def test_resume_without_last_checkpoint_is_an_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="last.pt"):
        fit(TrainConfig(), resume=tmp_path)


# ----------------------------------------------------------------------------------------------- eval

def test_eval_cli_prints_report_and_writes_confusion(runs, fer_folder, capsys, tmp_path, monkeypatch):
    """The report on stdout; plots only where --out asks, never into the current folder or the run's own."""
    run, _ = runs
    monkeypatch.chdir(tmp_path)
    before = sorted(p.name for p in run.iterdir())
    assert main(["eval", str(run), "--split", "val", "--data", str(fer_folder), "--device", "cpu"]) == 0
    out = capsys.readouterr().out
    assert "plain:" in out and "horizontal-flip TTA:" in out and "(official split, 168 faces)" in out
    assert out.count("precision") == 2 and all(out.count(c) >= 2 for c in CLASSES)
    assert sorted(p.name for p in run.iterdir()) == before and list(tmp_path.iterdir()) == []
    assert "--out FILE.png" in out
    res = evaluate_checkpoints([str(run)], "val", str(fer_folder), device="cpu")
    for kind in ("plain", "tta"):
        assert f"accuracy {res[kind]['accuracy']:.2f}%" in out
        assert f"ECE (15 bins) {res[kind]['ece']:.2f}%" in out
        assert res[kind]["confusion"].sum() == 168

    target = run.parent / "elsewhere" / "cm.png"
    target.parent.mkdir()
    assert main(["eval", str(run / "best.pt"), "--data", str(fer_folder), "--no-tta", "--out", str(target)]) == 0
    out = capsys.readouterr().out
    assert "horizontal-flip TTA" not in out and _is_png(target) and _is_png(target.parent / "cm_reliability.png")
    # into the run's folder under a new name: the run's own plots stay as training drew them
    own = {p.name: p.read_bytes() for p in run.iterdir() if p.suffix == ".png"}
    assert main(["eval", str(run), "--data", str(fer_folder), "--out", str(run / "cm_again.png")]) == 0
    assert all((run / name).read_bytes() == raw for name, raw in own.items())
    assert {p.name for p in run.iterdir() if p.suffix == ".png"} == set(own) | {"cm_again.png",
                                                                               "cm_again_reliability.png"}


def test_ensemble_averages_probabilities(runs, fer_folder):
    res = evaluate_checkpoints([str(r) for r in runs], "test", str(fer_folder), device="cpu")
    test = make_splits(load_fer2013(fer_folder), "official", seed=1)["test"]
    x, y = torch.from_numpy(test.images), torch.from_numpy(test.labels)
    members = []
    for r in runs:
        model, pre = model_from_checkpoint(load_checkpoint(r))
        members.append((predict_probs(model, x, pre, torch.device("cpu")),
                        predict_probs(model, x, pre, torch.device("cpu"), tta=True)))
    assert not torch.allclose(members[0][0], members[1][0])  # two different models
    for i, kind in enumerate(("plain", "tta")):
        manual = classification_report((members[0][i] + members[1][i]) / 2, y)
        assert res[kind]["accuracy"] == pytest.approx(manual["accuracy"])
        np.testing.assert_array_equal(res[kind]["confusion"], manual["confusion"])
        assert res[kind]["f1"] == manual["f1"]


def test_tta_views_are_the_face_its_mirror_and_ten_crops():
    x = torch.arange(2 * 32 * 32, dtype=torch.float32).view(2, 1, 32, 32)
    none, flip, ten = (tta_views(x, m) for m in ("none", "flip", "tencrop"))
    assert len(none) == 1 and len(flip) == 2 and len(ten) == 10
    assert torch.equal(none[0], x) and torch.equal(flip[1], x.flip(-1)) and torch.equal(ten[1], x.flip(-1))
    assert all(v.shape == x.shape for v in ten)
    d = round(0.06 * 32)
    # the top-left crop of the border-padded face is the face shifted by d down and right
    torch.testing.assert_close(ten[2][..., d:, d:], x[..., :-d, :-d])
    torch.testing.assert_close(ten[5][..., :-d, :-d], x[..., d:, d:])  # bottom-right: shifted up and left
    torch.testing.assert_close(ten[6], ten[2].flip(-1))
    assert len({v.sum().item() for v in ten[2:6]}) == 4  # four different shifts
    with pytest.raises(ValueError, match="tta must be one of none, flip, tencrop"):
        tta_views(x, "five-crop")


def test_ten_crop_eval_shares_passes_with_plain_and_flip(runs, fer_folder, capsys):
    run, _ = runs
    model, pre = model_from_checkpoint(load_checkpoint(run))
    test = make_splits(load_fer2013(fer_folder), "official", seed=1)["test"]
    x = torch.from_numpy(test.images)
    cpu = torch.device("cpu")
    both = predict_probs_tta(model, x, pre, cpu, 64, ("none", "flip", "tencrop"))
    torch.testing.assert_close(both["none"], predict_probs(model, x, pre, cpu))
    torch.testing.assert_close(both["flip"], predict_probs(model, x, pre, cpu, tta=True))
    torch.testing.assert_close(both["tencrop"], predict_probs(model, x, pre, cpu, tta="tencrop"))
    assert not torch.allclose(both["tencrop"], both["flip"])
    torch.testing.assert_close(both["tencrop"].sum(1), torch.ones(len(x)))

    assert main(["eval", str(run), "--data", str(fer_folder), "--device", "cpu", "--ten-crop"]) == 0
    out = capsys.readouterr().out
    assert "ten-crop TTA" in out and out.count("precision") == 3
    res = evaluate_checkpoints([str(run)], "test", str(fer_folder), device="cpu", tencrop=True)
    assert f"accuracy {res['tencrop']['accuracy']:.2f}%" in out
    assert res["tencrop"]["accuracy"] == pytest.approx(
        100 * (both["tencrop"].argmax(1) == torch.from_numpy(test.labels)).float().mean().item())


@pytest.mark.parametrize("argv", [["eval", "no/such/run"], ["eval", "RUN", "--split", "private"]])
def test_eval_bad_input_exits_2(argv, runs, capsys):
    argv = [str(runs[0]) if a == "RUN" else a for a in argv]
    try:
        code = main(argv)
    except SystemExit as e:  # argparse rejects an unknown --split choice itself
        code = e.code
    assert code == 2
    err = capsys.readouterr().err
    assert "no/such/run" in err or "invalid choice: 'private'" in err


def test_evaluate_checkpoints_rejects_bad_split(runs):
    with pytest.raises(ValueError, match="train, val, test"):
        evaluate_checkpoints([str(runs[0])], "holdout")


# ----------------------------------------------------------------------------------------------- report

def test_report_cli_table_and_plot(runs, tmp_path, capsys):
    plot, md = tmp_path / "report.png", tmp_path / "report.md"
    assert main(["report", *map(str, runs), "--plot", str(plot), "--markdown", str(md)]) == 0
    out = capsys.readouterr().out
    lines = [ln for ln in out.splitlines() if ln.startswith("|")]
    assert lines[0] == "| " + " | ".join(COLUMNS) + " |" and len(lines) == 4
    for run, line in zip(runs, lines[2:]):
        s = json.loads((run / "summary.json").read_text())
        cells = [c.strip() for c in line.strip("|").split("|")]
        # tiny_config trains on half of every split: the row and a note under the table say so
        assert s["fraction"] == 0.5 and cells[0] == f"{run.name} (fraction 0.5*)"
        assert cells[1] == "simple_cnn" and cells[3] == f"{s['params']:,}"
        assert cells[6] == f"{s['test_accuracy']:.2f}" and cells[7] == f"{s['test_accuracy_tta']:.2f}"
        assert cells[8] == f"{s['gap']:+.2f}" and cells[9] == f"{s['best_epoch']}/2"
    assert "* trained and scored on that share of every split: its val and test accuracies come from shrunk" in out
    assert md.read_text().startswith("\n".join(lines)) and _is_png(plot)
    assert main(["report", str(tmp_path / "none")]) == 2


def test_a_fraction_run_says_in_its_summary_that_val_and_test_were_shrunk(fer_folder, tmp_path, capsys):
    test = make_splits(load_fer2013(fer_folder), "official", seed=1, fraction=0.5)["test"]
    val = make_splits(load_fer2013(fer_folder), "official", seed=1, fraction=0.5)["val"]
    summary = fit(tiny_config(fer_folder, tmp_path, epochs=1, tta=False), progress=False)
    assert (summary["fraction"], summary["val_faces"], summary["test_faces"]) == (0.5, len(val), len(test))
    assert (f"fraction 0.5 of every split: val {len(val)} and test {len(test)} faces, not comparable with full-split "
            "accuracies") in capsys.readouterr().out
    full = fit(tiny_config(fer_folder, tmp_path, epochs=1, tta=False, fraction=1.0, name="full"), progress=False)
    assert full["fraction"] == 1.0 and "not comparable" not in capsys.readouterr().out



def test_a_dollar_in_a_run_name_is_text_not_mathtext(fer_folder, tmp_path, capsys):
    """A run named `$\\frac{$` (matplotlib would read its two dollars as a formula, and fail): training still
    draws its curves and confusion matrix, and `ferlab report` its comparison plot with the name as the label."""
    name = "$\\frac{$"
    fit(tiny_config(fer_folder, tmp_path, name=name, epochs=1, tta=False), progress=False)
    run = tmp_path / name
    assert _is_png(run / "curves.png") and _is_png(run / "confusion_test.png")
    assert main(["report", str(run), "--plot", str(tmp_path / "report.png")]) == 0
    assert f"(curves: {name})" in capsys.readouterr().out and _is_png(tmp_path / "report.png")

# ----------------------------------------------------------------------------------------------- W&B

def test_wandb_missing_only_warns(fer_folder, tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "wandb", None)  # as if not installed: importing it raises ModuleNotFoundError
    cfg = tmp_path / "cfg.yaml"
    cfg.write_text(yaml.safe_dump(tiny_config(fer_folder, tmp_path / "runs", epochs=1, tta=False).to_dict()))
    with pytest.warns(UserWarning, match=r"^--wandb needs the 'wandb' extra: pip install 'ferlab\[wandb\]' \(wandb is "
                                         r"not installed\); training without W&B logging$"):
        assert main(["train", str(cfg), "--wandb", "--no-progress"]) == 0
    assert (tmp_path / "runs" / "tiny" / "summary.json").exists()


def test_wandb_offline_logs_seed_keys(fer_folder, tmp_path, monkeypatch):
    wandb = pytest.importorskip("wandb")
    monkeypatch.setenv("WANDB_MODE", "offline")
    logged = []
    real_log = wandb.sdk.wandb_run.Run.log

    def spy(self, d, *args, **kwargs):
        logged.append(dict(d))
        return real_log(self, d, *args, **kwargs)

    monkeypatch.setattr(wandb.sdk.wandb_run.Run, "log", spy)
    summary = fit(tiny_config(fer_folder, tmp_path, epochs=2, tta=False), wandb_project="ferlab-test",
                  progress=False)
    assert len(logged) == 2 and all(set(d) == set(SEED_COLUMNS) for d in logged)
    # the offline run really was written, and its summary carries the seed's final overfitting gap
    (offline,) = (tmp_path / "tiny" / "wandb").glob("offline-run-*")
    (records,) = offline.glob("*.wandb")
    keys = [key.encode() for key in (*SEED_COLUMNS, "overfitting_gap")]
    deadline = time.monotonic() + 30  # wandb's service process may still be flushing on a busy machine
    while not all(k in (written := records.read_bytes()) for k in keys) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert all(k in written for k in keys)
    assert f"{summary['gap']}".encode()[:6] in written


# ----------------------------------------------------------------------------------------------- CLI

def test_cli_train_with_overrides(fer_folder, tmp_path, capsys):
    cfg = tmp_path / "cfg.yaml"
    cfg.write_text(yaml.safe_dump(tiny_config("/not/here", tmp_path / "runs", epochs=3).to_dict()))
    argv = ["train", str(cfg), "epochs=1", "augment.erase=0", "name=cli", "--data", str(fer_folder),
            "--no-progress", "tta=false"]
    assert main(argv) == 0
    run = tmp_path / "runs" / "cli"
    saved = yaml.safe_load((run / "config.yaml").read_text())
    assert saved["epochs"] == 1 and saved["augment"]["erase"] == 0 and saved["data"] == str(fer_folder)
    assert saved["tta"] is False and len(_rows(run)) == 1
    assert f"summary        {run / 'summary.json'}" in capsys.readouterr().out  # the summary table's last row


@pytest.mark.parametrize("override, expected", [
    ("epoch=1", "did you mean 'epochs'"),
    ("augment.eras=0", "did you mean 'augment.erase'"),
    ("lr=fast", "lr: expected a number, got 'fast'"),
    ("epochs", "must look like key=value"),
    ("optimizer=adamm", "optimizer: 'adamm' is not one of adam, adamw, sgd"),
])
def test_cli_train_bad_override_exits_2(override, expected, fer_folder, tmp_path, capsys):
    cfg = tmp_path / "cfg.yaml"
    cfg.write_text(yaml.safe_dump(tiny_config(fer_folder, tmp_path / "runs").to_dict()))
    assert main(["train", str(cfg), override]) == 2
    assert expected in capsys.readouterr().err
    assert not (tmp_path / "runs").exists()


def test_corrupt_or_unsafe_checkpoint_is_one_clear_line(runs, tmp_path, capsys):
    """A truncated, empty or code-carrying .pt gives one error line in predict, eval and train --resume, never
    torch's traceback or its advice to load with weights_only=False."""
    import os

    class Payload:
        def __reduce__(self):
            return (os.system, ("echo should-never-run",))

    run, _ = runs
    good = (run / "best.pt").read_bytes()
    bad = {"truncated.pt": good[: len(good) // 2], "empty.pt": b"", "garbage.pt": b"not a checkpoint"}
    for name, data in bad.items():
        (tmp_path / name).write_bytes(data)
    torch.save({"format": "ferlab", "x": Payload()}, tmp_path / "code.pt")
    resume = tmp_path / "resume"
    resume.mkdir()
    (resume / "last.pt").write_bytes(good[:100])
    for name in [*bad, "code.pt"]:
        for argv in (["predict", str(run), "--model", str(tmp_path / name), "--detector", "none"],
                     ["eval", str(tmp_path / name)]):
            assert main(argv) == 2, argv
            out, err = capsys.readouterr()
            assert err.count("\n") == 1 and "not a readable ferlab checkpoint" in err and name in err, err
            assert "weights_only" not in err and "Traceback" not in err and "should-never-run" not in out
    assert main(["train", "--resume", str(resume)]) == 2
    assert "not a readable ferlab checkpoint" in capsys.readouterr().err


def test_a_closed_stdout_neither_crashes_a_command_nor_stops_training(fer_folder, tmp_path):
    """`ferlab data ... | head -1` and `ferlab train ... | head -1`: the reader is gone before ferlab prints; data
    exits 0 without a traceback, and the training run still finishes and writes its summary."""
    import subprocess
    import sys

    def run_with_reader_gone(argv):
        p = subprocess.Popen([sys.executable, "-m", "ferlab.cli", *argv], stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE, cwd=tmp_path)
        p.stdout.close()  # like head after its first line: every later write hits a broken pipe
        _, err = p.communicate(timeout=300)
        return p.returncode, err.decode()

    rc, err = run_with_reader_gone(["data", str(fer_folder), "--no-cache"])
    assert rc == 0 and "Traceback" not in err and "BrokenPipe" not in err, err
    rc, err = run_with_reader_gone(["train", "model=simple_cnn", "input_size=48", "in_channels=1", "epochs=1",
                                    "batch_size=32", "fraction=0.5", "device=cpu", "threads=1", "name=piped",
                                    f"data={fer_folder}", f"out_dir={tmp_path / 'runs'}", "--no-progress"])
    assert rc == 0 and "Traceback" not in err, err
    assert json.loads((tmp_path / "runs" / "piped" / "summary.json").read_text())["epochs"] == 1


def test_resume_after_a_kill_in_the_first_epoch_matches_the_uninterrupted_run(fer_folder, tmp_path, monkeypatch,
                                                                               capsys):
    """Ctrl-C in epoch 1 (before any epoch was saved): last.pt holds epoch 0, the message says how to resume,
    and the resumed run ends exactly where the uninterrupted one ends."""
    kw = dict(augment=dict(hflip=0.5, rotate=5.0, erase=0.5), epochs=2)
    straight = tmp_path / "straight" / fit(tiny_config(fer_folder, tmp_path / "straight", **kw),
                                           progress=False)["name"]
    real, calls = trainer.augment, [0]

    def ctrl_c_in_step_2(*a, **k):
        calls[0] += 1
        if calls[0] == 2:
            raise KeyboardInterrupt
        return real(*a, **k)

    monkeypatch.setattr(trainer, "augment", ctrl_c_in_step_2)
    with pytest.raises(KeyboardInterrupt):
        fit(tiny_config(fer_folder, tmp_path / "cut", **kw), progress=False)
    monkeypatch.setattr(trainer, "augment", real)
    cut = tmp_path / "cut" / "tiny"
    err = capsys.readouterr().err
    assert f"{cut / 'last.pt'} holds epoch 0 of 2. Continue with: ferlab train --resume {cut}" in err
    assert torch.load(cut / "last.pt", weights_only=True)["epoch"] == 0
    assert main(["train", "--resume", str(cut), "--no-progress"]) == 0
    _assert_same_metrics(straight, cut)


def test_resume_keeps_the_run_config_and_a_finished_run_is_left_alone(runs, tmp_path, capsys):
    import shutil
    run = tmp_path / "run"
    shutil.copytree(runs[0], run)
    summary = (run / "summary.json").read_text()
    for argv, said in ((["lr=0.5"], "cannot change 'lr' when resuming"),
                       (["epochs=9"], "cannot change 'epochs' when resuming"),
                       ([str(run / "config.yaml")], "give a config or --resume RUN_DIR, not both")):
        assert main(["train", *argv, "--resume", str(run)]) == 2
        assert said in capsys.readouterr().err
    assert main(["train", "--resume", str(run), "threads=1", "--no-progress"]) == 0
    assert "finished all 2 epochs already; nothing to resume" in capsys.readouterr().out
    assert (run / "summary.json").read_text() == summary  # not redone, wall time not overwritten


# ----------------------------------------------------------------------------------------------- concurrent runs

def _at_the_barrier(barrier, results, rounds, work):
    for r in range(rounds):
        barrier.wait()  # every process at the same instant
        try:
            results.put((r, work(r)))
        except Exception as e:  # reported, not raised: the test names what failed
            results.put((r, f"{type(e).__name__}: {e}"))


def _together(work, procs: int = 4, rounds: int = 6) -> list:
    """`work(round)` in `procs` forked processes at once, `rounds` times; every result or error, in any order."""
    import multiprocessing
    ctx = multiprocessing.get_context("fork")
    barrier, results = ctx.Barrier(procs), ctx.Queue()
    workers = [ctx.Process(target=_at_the_barrier, args=(barrier, results, rounds, work)) for _ in range(procs)]
    for w in workers:
        w.start()
    got = [results.get(timeout=120) for _ in range(procs * rounds)]
    for w in workers:
        w.join(timeout=30)
    return got


def test_runs_started_at_once_under_one_name_get_a_folder_each(tmp_path):
    """Two `ferlab train` started together with the same name shared runs/<name>: the folder is now claimed by an
    atomic mkdir, so 4 processes asking at once, 6 times, get 24 distinct folders."""
    got = _together(lambda r: str(trainer._new_run_dir(str(tmp_path / "runs"), "tiny")))
    folders = [p for _, p in got]
    assert len(set(folders)) == len(folders) == 24, sorted(folders)
    assert all(Path(p).is_dir() for p in folders), folders
    assert sorted(p.name for p in (tmp_path / "runs").iterdir()) == sorted(["tiny"] + [f"tiny-{i}" for i in range(2, 25)])


def test_processes_writing_one_checkpoint_at_once_never_share_a_temporary_file(runs, tmp_path):
    """Checkpoints go through a temporary file named for the writing process: 4 processes rewriting one best.pt
    at once (as `ferlab calibrate` may while a run ends) all succeed, and it is always one whole checkpoint."""
    from ferlab.engine.checkpoint import write_checkpoint
    ckpt, path = load_checkpoint(runs[0]), tmp_path / "best.pt"

    def write(r):
        write_checkpoint(path, {**ckpt, "epoch": 1000 + os.getpid() % 1000})
        return load_checkpoint(path)["epoch"]  # whichever process renamed last: a whole checkpoint

    got = _together(write)
    assert all(isinstance(e, int) and e >= 1000 for _, e in got), got
    final = load_checkpoint(path)
    assert all(torch.equal(v, final["state_dict"][k]) for k, v in ckpt["state_dict"].items())
    assert not [p.name for p in tmp_path.iterdir() if ".tmp" in p.name]  # no temporary file left


def _pixels(path: Path) -> np.ndarray:
    with Image.open(path) as im:
        return np.asarray(im.convert("RGB"))


def test_run_interrupted_while_drawing_its_plots_finishes_them_on_resume(fer_folder, tmp_path, monkeypatch, capsys):
    """Killed (here Ctrl-C) after its test evaluation, while drawing: summary.json is written last, so the run
    is not finished, and `train --resume` draws the plots and writes the summary; its images/s is the mean of
    every epoch's, not None."""
    def killed(*a, **k):
        raise KeyboardInterrupt
    monkeypatch.setattr(trainer, "plot_confusion", killed)
    with pytest.raises(KeyboardInterrupt):
        fit(tiny_config(fer_folder, tmp_path, tta=False), progress=False)
    monkeypatch.undo()
    run = tmp_path / "tiny"
    assert not (run / "summary.json").exists()
    assert main(["train", "--resume", str(run), "--no-progress"]) == 0
    assert _is_png(run / "curves.png") and _is_png(run / "confusion_test.png")
    s = json.loads((run / "summary.json").read_text())
    assert s["images_per_s"] == pytest.approx(np.mean([float(r["images_per_s"]) for r in _rows(run)]), rel=1e-4)
    assert main(["train", "--resume", str(run), "--no-progress"]) == 0
    assert "nothing to resume" in capsys.readouterr().out


def test_finished_run_missing_its_plots_gets_them_on_resume(fer_folder, tmp_path, capsys):
    """A run with summary.json but no plots (killed between the two by an older ferlab, or plots deleted):
    `train --resume` draws the same plots again from best.pt and metrics.csv and leaves summary.json alone."""
    run = tmp_path / fit(tiny_config(fer_folder, tmp_path, epochs=1, tta=False), progress=False)["name"]
    capsys.readouterr()
    summary = (run / "summary.json").read_text()
    before = {p: _pixels(run / p) for p in ("curves.png", "confusion_test.png")}
    for p in before:
        (run / p).unlink()
    assert main(["train", "--resume", str(run), "--no-progress"]) == 0
    assert "drew its missing curves.png, confusion_test.png" in capsys.readouterr().out
    for p, pixels in before.items():
        np.testing.assert_array_equal(_pixels(run / p), pixels, err_msg=p)
    assert (run / "summary.json").read_text() == summary


def test_a_full_disk_stops_training_with_one_line_that_says_how_to_resume(fer_folder, small_disk, capsys):
    """The run folder on a real file system that fills up after epoch 1: training stops with one line that names
    the file, says "no space left", which epoch last.pt holds and `ferlab train --resume RUN`; no temporary or
    half-written file stays (torch's own error was "[enforce fail at inline_container.cc] unexpected pos" and
    a last.tmp), also when the resume itself meets the full disk; once there is room the resumed run finishes."""
    disk = small_disk.mount(64 * 2**20)  # last.pt with its Adam state is 14 MB
    filler = []

    def fill_after_epoch_1(epoch, metrics):
        if epoch == 1:  # room for metrics.csv, none for a checkpoint
            filler.append(small_disk.leave(disk, 8192))

    with pytest.raises(RuntimeError) as raised:
        fit(tiny_config(fer_folder, disk), progress=False, epoch_hook=fill_after_epoch_1)
    run = disk / "tiny"
    said = str(raised.value)
    assert "\n" not in said and "no space left on device" in said and f"cannot write {run}/" in said, said
    assert f"{run / 'last.pt'} holds epoch 1 of 2" in said and f"ferlab train --resume {run}" in said, said
    assert not [p.name for p in run.iterdir() if ".tmp" in p.name]
    assert torch.load(run / "last.pt", weights_only=True)["epoch"] == 1 and _rows(run)[0]["epoch"] == "1"

    assert main(["train", "--resume", str(run), "--no-progress"]) == 2  # the disk is still full
    err = capsys.readouterr().err
    [line] = [ln for ln in err.splitlines() if "no space left" in ln]
    assert line.startswith("ferlab train: error: cannot write") and f"--resume {run}" in line, err
    assert "Traceback" not in err and not [p.name for p in run.iterdir() if ".tmp" in p.name]

    filler[0].unlink()
    assert main(["train", "--resume", str(run), "--no-progress"]) == 0
    assert [r["epoch"] for r in _rows(run)] == ["1", "2"] and (run / "summary.json").exists()


# ----------------------------------------------------------------------------------------------- SAM

def test_sam_takes_the_gradient_at_the_worst_nearby_point_and_keeps_the_weights():
    """On the bowl 0.5 * sum(a * w^2) the gradient is a * w everywhere, so the sharpness-aware gradient is
    a * (w + rho * g / |g|) with g = a * w, and the loss it returns is the bowl's there, above the loss at w."""
    from ferlab.engine.sam import sharpness_aware_grads
    a, w0, rho = torch.tensor([1.0, 3.0, 0.5]), torch.tensor([1.0, -2.0, 0.5]), 0.1
    w = torch.nn.Parameter(w0.clone())
    model = torch.nn.Module()
    model.w = w

    def bowl():
        return 0.5 * (a * w ** 2).sum()
    bowl().backward()
    g = a * w0
    worst = w0 + rho * g / g.norm()
    loss = sharpness_aware_grads(model, bowl, rho)
    assert torch.allclose(w.grad, a * worst, atol=1e-6)
    assert torch.equal(w.detach(), w0)  # restored: the optimizer steps from w
    assert loss.item() == pytest.approx(0.5 * (a * worst ** 2).sum().item()) and loss.item() > bowl().item()
    with pytest.raises(ValueError, match="sam_rho must be > 0"):
        sharpness_aware_grads(model, bowl, 0.0)
    w.grad = None
    with pytest.raises(RuntimeError, match=r"call loss.backward\(\) first"):
        sharpness_aware_grads(model, bowl, rho)


def test_sam_second_pass_leaves_batchnorm_statistics_as_one_pass_left_them():
    """The batch is seen twice per step; BatchNorm's running statistics (and its batch count) must count it
    once, and its momentum comes back. The gradients do change: they are taken elsewhere."""
    import copy

    import torch.nn.functional as F

    from ferlab.engine.sam import sharpness_aware_grads
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.BatchNorm1d(8), torch.nn.ReLU(),
                                torch.nn.Linear(8, 3)).train()
    once = copy.deepcopy(model)
    x, y = torch.randn(16, 4) * 3 + 1, torch.randint(0, 3, (16,))
    F.cross_entropy(model(x), y).backward()
    F.cross_entropy(once(x), y).backward()
    sharpness_aware_grads(model, lambda: F.cross_entropy(model(x), y), 0.5)
    bn, bn_once = model[1], once[1]
    assert torch.equal(bn.running_mean, bn_once.running_mean) and torch.equal(bn.running_var, bn_once.running_var)
    assert bn.num_batches_tracked.item() == 1 and bn.momentum == 0.1
    assert not torch.allclose(model[0].weight.grad, once[0].weight.grad)
    for p, q in zip(model.parameters(), once.parameters()):
        assert torch.equal(p, q)


def test_training_with_sam_records_it_and_takes_other_steps(runs, fer_folder, tmp_path):
    """Same seed, data and batches as the tiny run; sam_rho changes the steps (not the first batch's loss),
    is written into the run's config, and a negative radius is a config error."""
    result = fit(tiny_config(fer_folder, tmp_path, name="tiny-sam", sam_rho=0.05), progress=False)
    run = tmp_path / result["name"]
    assert yaml.safe_load((run / "config.yaml").read_text())["sam_rho"] == 0.05
    plain, sam = _rows(runs[0]), _rows(run)
    assert len(sam) == 2 and float(sam[1]["val_loss"]) != pytest.approx(float(plain[1]["val_loss"]), abs=1e-4)
    with pytest.raises(ValueError, match="sam_rho: -0.1 is a radius"):
        tiny_config(fer_folder, tmp_path, sam_rho=-0.1)


# ----------------------------------------------------------------------------------------------- distillation

def test_distilled_target_by_hand():
    """(1 - w) x the smoothed one-hot label + w x softmax(teacher / T), computed for one face by hand; soft
    targets (FER+) are mixed as they are."""
    from ferlab.engine.trainer import distilled_target
    cfg = TrainConfig(label_smoothing=0.1, distill="x.pt", distill_weight=0.25, distill_temperature=2.0)
    logits = torch.tensor([[2.0, 0.0, 0.0, 0.0, 0.0, 0.0, -2.0]])
    soft = np.exp(logits.numpy()[0] / 2.0)
    soft /= soft.sum()
    label = np.full(7, 0.1 / 7)
    label[3] += 0.9
    got = distilled_target(torch.tensor([3]), logits, cfg, 7)[0].numpy()
    assert np.allclose(got, 0.75 * label + 0.25 * soft, atol=1e-6) and got.sum() == pytest.approx(1)
    votes = torch.tensor([[0.0, 0.0, 0.0, 0.5, 0.5, 0.0, 0.0]])
    assert np.allclose(distilled_target(votes, logits, cfg, 7)[0].numpy(), 0.75 * votes[0].numpy() + 0.25 * soft)


def test_clean_view_targets_are_the_teachers_flip_tta_probabilities(calibrated_run, fer_folder, tmp_path):
    """distill_views: clean: each training face's target is (1 - w) x its smoothed label + w x the teacher's
    flip-TTA probabilities on the face as stored (`ferlab eval`'s), computed once; an unknown mode is refused.
    Kept in the run folder, they are read back, not computed, for the same teacher file and faces only."""
    from ferlab.data import load_fer2013, make_splits
    from ferlab.engine import load_checkpoint, model_from_checkpoint
    from ferlab.engine.predict import predict_probs
    from ferlab.engine.trainer import clean_view_targets
    train = make_splits(load_fer2013(str(fer_folder)), "official")["train"]
    faces, labels = torch.from_numpy(train.images), torch.from_numpy(train.labels).long()
    teacher, pre = model_from_checkpoint(load_checkpoint(calibrated_run))
    cfg = TrainConfig(label_smoothing=0.1, distill=str(calibrated_run), distill_weight=0.4, distill_views="clean")
    got = clean_view_targets(teacher, faces, labels, None, pre, cfg, 7, torch.device("cpu"))
    probs = predict_probs(teacher, faces, pre, torch.device("cpu"), tta="flip")
    onehot = torch.nn.functional.one_hot(labels, 7).float() * 0.9 + 0.1 / 7
    assert torch.allclose(got, 0.6 * onehot + 0.4 * probs, atol=1e-5)
    assert torch.allclose(got.sum(1), torch.ones(len(labels)), atol=1e-5)
    assert (got - onehot).abs().max() > 0.05  # the teacher's share moves the targets off the labels

    class Absent(torch.nn.Module):  # a teacher that must not be run: the cache has its answers
        def forward(self, x):
            raise AssertionError("the teacher ran although its probabilities were cached")

    cache = tmp_path / "teacher_probs.pt"
    first = clean_view_targets(teacher, faces, labels, None, pre, cfg, 7, torch.device("cpu"), cache)
    assert cache.exists() and torch.allclose(first, got, atol=1e-6)
    again = clean_view_targets(Absent(), faces, labels, None, pre, cfg, 7, torch.device("cpu"), cache)
    assert torch.equal(again, first)
    with pytest.raises(AssertionError, match="teacher ran"):  # other faces: the cache is not theirs
        clean_view_targets(Absent(), faces[:-1], labels[:-1], None, pre, cfg, 7, torch.device("cpu"), cache)
    other = tmp_path / "other_teacher.pt"
    torch.save({**load_checkpoint(calibrated_run), "logit_bias": [1.0] + [0.0] * 6}, other)
    with pytest.raises(AssertionError, match="teacher ran"):  # another teacher file: computed again
        clean_view_targets(Absent(), faces, labels, None, pre, TrainConfig(**{**cfg.to_dict(), "distill": str(other)}),
                           7, torch.device("cpu"), cache)
    with pytest.raises(ValueError, match="distill_views: 'noisy' is not one of augmented, clean"):
        TrainConfig(distill="x.pt", distill_views="noisy")


def _seeing_other_input(run: Path, tmp_path: Path) -> str:
    """A copy of RUN's checkpoint that expects other input (no per-face standardisation)."""
    from ferlab.engine import load_checkpoint
    ckpt = load_checkpoint(run)
    other = tmp_path / "other_input.pt"
    torch.save({**ckpt, "preprocess": {**ckpt["preprocess"], "standardize": False}}, other)
    return str(other)


def test_distillation_pulls_the_student_toward_its_teacher(calibrated_run, fer_folder, tmp_path):
    """A teacher that says "surprise" to every face (a real checkpoint with a large logit bias): the student
    trained on its soft targets alone (weight 1) says surprise to most training faces, the same student trained
    on the labels does not; a teacher that sees other input is refused in one line."""
    from ferlab.data import load_fer2013, make_splits
    from ferlab.engine import load_checkpoint, model_from_checkpoint
    from ferlab.engine.trainer import to_model_input
    ckpt = load_checkpoint(calibrated_run)
    surprise = CLASSES.index("surprise")
    teacher = tmp_path / "surprised.pt"
    torch.save({**ckpt, "logit_bias": [8.0 if c == surprise else 0.0 for c in range(len(CLASSES))]}, teacher)
    faces = torch.from_numpy(make_splits(load_fer2013(str(fer_folder)), "official")["train"].images)

    def says_surprise(run):
        student, pre = model_from_checkpoint(load_checkpoint(run))
        with torch.no_grad():
            return float((student(to_model_input(faces, pre, torch.device("cpu"))).argmax(1) == surprise).float().mean())

    threads = torch.get_num_threads()
    try:
        plain = fit(tiny_config(fer_folder, tmp_path, name="plain", seed=5, epochs=3), progress=False)
        taught = fit(tiny_config(fer_folder, tmp_path, name="taught", seed=5, epochs=3, distill=str(teacher),
                                 distill_weight=1.0), progress=False)
        clean = fit(tiny_config(fer_folder, tmp_path, name="taught_clean", seed=5, epochs=3, distill=str(teacher),
                                distill_weight=1.0, distill_views="clean"), progress=False)
        assert says_surprise(tmp_path / taught["name"]) > 0.9 > 0.5 > says_surprise(tmp_path / plain["name"])
        assert says_surprise(tmp_path / clean["name"]) > 0.9
        assert (tmp_path / clean["name"] / "teacher_probs.pt").exists()  # for a --resume to read, not recompute
        with pytest.raises(ValueError, match="distill: .* must see the same input"):
            fit(tiny_config(fer_folder, tmp_path, name="refused", distill=_seeing_other_input(calibrated_run, tmp_path)),
                progress=False)
    finally:
        torch.set_num_threads(threads)


def test_init_starts_the_run_from_a_checkpoints_weights(calibrated_run, fer_folder, tmp_path):
    """`init: RUN` (fine-tuning): the network starts with RUN's weights. With a learning rate of 0 they are still
    RUN's, exactly, after an epoch, where a run without init has its own random ones; another network or other
    input is refused in one line that says so."""
    from ferlab.engine import load_checkpoint
    source = load_checkpoint(calibrated_run)["state_dict"]
    params = [k for k in source if "running" not in k and "num_batches" not in k]
    frozen = dict(optimizer="sgd", lr=0.0, momentum=0.0, nesterov=False, weight_decay=0.0, epochs=1)
    threads = torch.get_num_threads()
    try:
        tuned = fit(tiny_config(fer_folder, tmp_path, name="tuned", init=str(calibrated_run), **frozen),
                    progress=False)
        fresh = fit(tiny_config(fer_folder, tmp_path, name="fresh", **frozen), progress=False)
        got = {name: load_checkpoint(tmp_path / s["name"])["state_dict"] for name, s in
               (("tuned", tuned), ("fresh", fresh))}
        assert all(torch.equal(got["tuned"][k], source[k]) for k in params)
        assert not any(torch.equal(got["fresh"][k], source[k]) for k in params if k.endswith("weight"))
        with pytest.raises(ValueError, match="init: .* fine-tuning starts from the same network"):
            fit(tiny_config(fer_folder, tmp_path, name="other_net", model="simple_cnn_v2", init=str(calibrated_run)),
                progress=False)
        with pytest.raises(ValueError, match="init: .* must see the same input"):
            fit(tiny_config(fer_folder, tmp_path, name="other_input", init=_seeing_other_input(calibrated_run, tmp_path)),
                progress=False)
        # a packaged config may start from a run the user has not trained yet: the error names the key
        with pytest.raises(FileNotFoundError, match=r"^init: checkpoint .*no_such_run not found"):
            fit(tiny_config(fer_folder, tmp_path, name="unborn", init=str(tmp_path / "no_such_run")), progress=False)
        assert not (tmp_path / "unborn").exists()
    finally:
        torch.set_num_threads(threads)


def test_selection_on_corrupted_validation_faces(fer_folder, tmp_path):
    """select_corruptions: every epoch's accuracy on the validation faces under each corruption is logged, the
    score mixes it with the clean accuracy by select_weight, and best.pt is the epoch with the highest score;
    the logged accuracy is the best model's on `corrupt(name, val faces)`, as bench/robustness.py makes them."""
    from ferlab.data.corruptions import corrupt
    threads = torch.get_num_threads()
    try:
        s = fit(tiny_config(fer_folder, tmp_path, name="robust", epochs=3, select_corruptions=["noise20", "eyes"],
                            select_weight=0.75, augment=dict(hflip=0.5, noise=0.3, blur=0.5, jpeg=0.5)),
                progress=False)
    finally:
        torch.set_num_threads(threads)
    rows = _rows(tmp_path / "robust")
    assert len(rows) == 3
    for r in rows:
        mean = (float(r["val_noise20"]) + float(r["val_eyes"])) / 2
        assert float(r["val_corrupted_accuracy"]) == pytest.approx(mean, abs=1e-4)
        assert float(r["val_select"]) == pytest.approx(0.25 * float(r["val_accuracy"]) + 0.75 * mean, abs=1e-4)
    scores = [float(r["val_select"]) for r in rows]
    best = load_checkpoint(tmp_path / "robust" / "best.pt")
    assert best["epoch"] == 1 + scores.index(max(scores)) == s["best_epoch"]
    assert s["selection"] == {"corruptions": ["noise20", "eyes"], "weight": 0.75,
                              "val_corrupted_accuracy": pytest.approx(float(rows[best["epoch"] - 1]
                                                                            ["val_corrupted_accuracy"]), abs=1e-4),
                              "val_select": pytest.approx(max(scores), abs=1e-4)}
    val = make_splits(load_fer2013(str(fer_folder)), "official", seed=1, fraction=0.5)["val"]  # tiny_config's
    model, pre = model_from_checkpoint(best, calibrated=False)  # the network as training scored it
    noisy = torch.from_numpy(corrupt("noise20", val.images))
    probs = predict_probs(model, noisy, pre, torch.device("cpu"), 256, False, "fp32", True)
    acc = 100 * (probs.argmax(1).numpy() == val.labels).mean()
    assert acc == pytest.approx(float(rows[best["epoch"] - 1]["val_noise20"]), abs=1e-4)


def test_a_run_ends_with_a_short_summary_table_and_whole_epoch_curves(fer_folder, tmp_path, capsys, monkeypatch):
    """The end of `fit`: a two-column table (no raw JSON line) with the numbers of summary.json; the curves
    have whole-number epoch ticks and show a run of one epoch as points."""
    from ferlab.engine import plots
    drawn = {}
    real = plots.save_figure
    monkeypatch.setattr(plots, "save_figure", lambda fig, out: drawn.setdefault(Path(out).name, fig) and real(fig, out))
    summary = fit(tiny_config(fer_folder, tmp_path, epochs=1, tta=True), progress=False)
    out = capsys.readouterr().out.strip().splitlines()
    table = out[-11:]  # run, model, best epoch, val, test, data (tiny_config's fraction 0.5), gap, F1, ECE, time, summary
    assert table[0].split() == ["run", summary["name"]]
    assert not any(line.lstrip().startswith("{") for line in out)
    assert f"{summary['test_accuracy']:.2f}% plain, {summary['test_accuracy_tta']:.2f}% flip TTA" in "\n".join(table)
    assert table[-1].split()[-1] == str(tmp_path / summary["name"] / "summary.json")
    curves = drawn["curves.png"]
    for ax in curves.axes:
        ticks = [t for t in ax.get_xticks() if ax.get_xlim()[0] <= t <= ax.get_xlim()[1]]
        assert ticks and all(float(t).is_integer() for t in ticks), ticks
        assert all(len(line.get_xdata()) == 1 and line.get_marker() == "o" for line in ax.get_lines())
