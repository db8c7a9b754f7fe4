"""bench/robustness.py: its corruptions (ferlab.data.corruptions), on real FER2013 faces, do what they say,
deterministically; its scores are `ferlab eval`'s flip-TTA accuracy; one small end-to-end run writes a row per
corruption."""
from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
from conftest import load_bench

import ferlab.data.corruptions as corruptions
from ferlab.engine import TrainConfig, save_checkpoint, train_one_epoch
from ferlab.engine.trainer import build_preprocess, make_optimizer, make_scheduler
from ferlab.models import create_model

rb = load_bench("robustness")


@pytest.fixture(scope="module")
def faces(fer_slice) -> np.ndarray:
    """Four real PrivateTest faces per class, none of them blank (FER2013 holds a few flat grey non-faces)."""
    usage, labels, px = np.array(fer_slice["usage"]), fer_slice["labels"], fer_slice["pixels"]
    ok = (usage == "PrivateTest") & (px.reshape(len(px), -1).std(1) > 20)
    pick = np.concatenate([np.flatnonzero(ok & (labels == k))[:4] for k in range(7)])
    return px[pick]


def small_checkpoint(path: Path, fer_slice, seed: int) -> Path:
    """A real checkpoint, as test_predict's tiny_checkpoint makes one (one epoch of the training loop on the
    slice's Training faces), but of simple_cnn at 24 px: a few times cheaper to run than vgg_s at 48, so the
    end-to-end run (64 faces x 13 corruptions x 2 flips) takes seconds."""
    cfg = TrainConfig(model="simple_cnn", input_size=24, in_channels=1, mean=[0.5], std=[0.25], standardize=True,
                      batch_size=32, lr=0.05, device="cpu")
    pre = build_preprocess(cfg)
    torch.manual_seed(seed)
    model = create_model("simple_cnn", in_channels=pre.in_channels, input_size=pre.input_size)
    train = np.array(fer_slice["usage"]) == "Training"
    images, labels = torch.from_numpy(fer_slice["pixels"][train]), torch.from_numpy(fer_slice["labels"][train])
    optimizer = make_optimizer(cfg, model)
    scheduler = make_scheduler(cfg, optimizer, len(labels) // cfg.batch_size)
    train_one_epoch(model, images, labels, pre, optimizer, scheduler, cfg, 1, torch.device("cpu"), progress=False)
    save_checkpoint(path, model=model, model_name="simple_cnn", model_args={}, pre=pre, config=cfg.to_dict(),
                    epoch=1, best_val_acc=0.0)
    return path


@pytest.fixture(scope="module")
def tiny(fer_slice, tmp_path_factory) -> Path:
    return small_checkpoint(tmp_path_factory.mktemp("robust") / "tiny.pt", fer_slice, seed=0)


@pytest.fixture(scope="module")
def tiny2(fer_slice, tmp_path_factory) -> Path:
    return small_checkpoint(tmp_path_factory.mktemp("robust") / "tiny2.pt", fer_slice, seed=1)


def _f(x):
    return x.astype(np.float64)


def grad_energy(x: np.ndarray) -> np.ndarray:
    """Mean squared difference of neighbouring pixels, per face."""
    x = _f(x)
    return (np.diff(x, axis=1) ** 2).mean((1, 2)) + (np.diff(x, axis=2) ** 2).mean((1, 2))


def high_freq_energy(x: np.ndarray) -> np.ndarray:
    """Mean squared 3x3 Laplacian, per face."""
    return np.array([(cv2.Laplacian(_f(f), cv2.CV_64F) ** 2).mean() for f in x])


def test_corruptions_are_deterministic_keep_shape_and_change_the_face(faces):
    before = faces.copy()
    for name in corruptions.CORRUPTIONS:
        a, b = corruptions.corrupt(name, faces), corruptions.corrupt(name, faces)
        assert a.shape == faces.shape and a.dtype == np.uint8, name
        assert np.array_equal(a, b), f"{name} is not deterministic"
        assert np.array_equal(faces, before), f"{name} changed its input"
        changed = (a != faces).any(axis=(1, 2))
        if name == "clean":
            assert not changed.any()
        else:
            assert changed.all(), f"{name} left {np.sum(~changed)} faces as they were"
    # every corruption has its own seed: the two noise levels do not share their draws
    assert corruptions.seed_of("noise10") != corruptions.seed_of("noise20")


def test_blur_and_down_up_remove_detail(faces):
    g, blur = grad_energy(faces), grad_energy(corruptions.corrupt("blur1", faces))
    assert (blur < 0.7 * g).all()
    h, down_up = high_freq_energy(faces), high_freq_energy(corruptions.corrupt("downup50", faces))
    assert (down_up < 0.6 * h).all()


def test_noise_has_the_asked_std_and_jpeg_is_milder_than_noise_20(faces):
    for name, std in (("noise10", 10), ("noise20", 20)):
        d = _f(corruptions.corrupt(name, faces)) - _f(faces)
        assert 0.85 * std < d.std() < 1.02 * std, (name, d.std())  # a little below: clipped at 0 and 255
        assert abs(d.mean()) < 1.0

    def rms(name):
        return np.sqrt(((_f(corruptions.corrupt(name, faces)) - _f(faces)) ** 2).mean())

    assert 1.0 < rms("jpeg20") < rms("noise20")
    assert (corruptions.corrupt("jpeg20", faces) != faces).mean() > 0.3  # most pixels move


def test_contrast_halves_the_spread_about_the_mean_and_dark_darkens(faces):
    x, low = _f(faces), _f(corruptions.corrupt("contrast50", faces))
    assert np.allclose(low.mean((1, 2)), x.mean((1, 2)), atol=0.5)
    assert np.allclose(low.std((1, 2)), 0.5 * x.std((1, 2)), atol=0.5)
    dark = _f(corruptions.corrupt("dark50", faces))
    assert np.allclose(dark.mean((1, 2)), 0.5 * x.mean((1, 2)), atol=0.5)
    assert np.allclose(dark.std((1, 2)), 0.5 * x.std((1, 2)), atol=0.5)
    gamma = _f(corruptions.corrupt("gamma2", faces))
    assert (gamma <= x).all() and (gamma.mean((1, 2)) < 0.85 * x.mean((1, 2))).all()
    assert np.array_equal(corruptions.corrupt("gamma2", np.array([[[0, 128, 255]]], np.uint8)), [[[0, 64, 255]]])


@pytest.mark.parametrize("name, box", [("eyes", (12, 24, 6, 42)), ("mouth", (32, 44, 12, 36))])
def test_patch_makes_its_box_flat_grey_and_leaves_the_rest(faces, name, box):
    out = corruptions.corrupt(name, faces)
    r0, r1, c0, c1 = box
    assert (out[:, r0:r1, c0:c1] == corruptions.PATCH_GREY).all()
    mask = np.ones(faces.shape[1:], bool)
    mask[r0:r1, c0:c1] = False
    assert np.array_equal(out[:, mask], faces[:, mask])


def test_rotation_30_moves_more_than_15(faces):
    def move(name):
        return np.abs(_f(corruptions.corrupt(name, faces)) - _f(faces)).mean((1, 2))

    m15, m30 = move("rot15"), move("rot30")
    assert (m15 > 2).all() and (m30 > m15).all()
    # turned about the face centre: turning back by -15 degrees restores the middle of the face
    back = corruptions.rotate(corruptions.corrupt("rot15", faces), None, -15.0)
    assert np.abs(_f(back[:, 16:32, 16:32]) - _f(faces[:, 16:32, 16:32])).mean() < 0.5 * m15.mean()


def test_clean_and_ensemble_scores_are_ferlab_evals(tiny, tiny2, fer_folder, monkeypatch):
    """The bench's clean row is `ferlab eval`'s flip-TTA accuracy: one model, and an ensemble A+B. A member named
    in several columns is loaded and run once per corruption (candidate ensembles cost only their union)."""
    import ferlab.engine.predict as predict
    from ferlab.engine.evaluation import evaluate_checkpoints
    specs = [[str(tiny)], [str(tiny), str(tiny2)]]
    ckpts, faces, labels, protocol = rb._split_faces(specs, "test", str(fer_folder))
    assert protocol == "official" and len(labels) == 7 * 24
    assert ckpts[0][0] is ckpts[1][0] and ckpts[1][1] is not ckpts[1][0]
    runs, run = [], predict.predict_probs_tta
    monkeypatch.setattr(predict, "predict_probs_tta", lambda model, *a: runs.append(model) or run(model, *a))
    got = rb.score(ckpts, faces, labels, ["clean"], torch.device("cpu"))["clean"]
    assert len(runs) == 2 and runs[0] is not runs[1]  # tiny once, tiny2 once: not three runs
    want = [evaluate_checkpoints(s, "test", str(fer_folder), device="cpu")["tta"]["accuracy"] for s in specs]
    assert got == pytest.approx(want, abs=1e-9)


def test_models_held_out_on_other_faces_are_refused(tiny, tmp_path, fer_folder):
    ckpt = torch.load(tiny, weights_only=True)
    ckpt["config"] = dict(ckpt["config"], split="seed", seed=7)
    other = tmp_path / "seed_split.pt"
    torch.save(ckpt, other)
    with pytest.raises(SystemExit, match="split protocol"):
        rb._split_faces([[str(tiny)], [str(other)]], "test", str(fer_folder))


def test_main_writes_a_row_per_corruption(tiny, fer_folder, tmp_path, capsys):
    threads, cv_threads = torch.get_num_threads(), cv2.getNumThreads()
    md = tmp_path / "robustness.md"
    try:
        text = rb.main(["--data", str(fer_folder), "--models", str(tiny), "--limit", "64", "--markdown", str(md)])
    finally:
        torch.set_num_threads(threads)
        cv2.setNumThreads(cv_threads)
    assert md.read_text() == text
    assert capsys.readouterr().out.startswith(text)
    assert "command: python bench/robustness.py --data" in text and f"torch {torch.__version__}" in text
    assert "PrivateTest (official protocol): 64 of 168 faces" in text
    rows = [line for line in text.splitlines() if line.startswith("| ") and not line.startswith("| corruption")]
    assert [r.split(" | ")[0][2:] for r in rows] == [label for label, _ in corruptions.CORRUPTIONS.values()]
    accs = [float(r.split(" | ")[1].rstrip("%")) for r in rows]
    drops = [float(r.split(" | ")[2].rstrip(" |")) for r in rows[1:]]
    assert all(0 <= a <= 100 for a in accs)
    assert drops == pytest.approx([accs[0] - a for a in accs[1:]], abs=0.011)
