"""Batched augmentation on real FER2013 faces: each op does what it says, seeded, and never at evaluation."""
from __future__ import annotations

import cv2
import numpy as np

import pytest
import torch

import ferlab.engine.trainer as trainer
from ferlab.data.augment import AugmentConfig, augment, degrade, gaussian_blur, jpeg_compress, jpeg_tables, mix
from ferlab.engine import TrainConfig
from ferlab.engine.trainer import build_preprocess, evaluate, make_optimizer, make_scheduler, predict_probs
from ferlab.inference.preprocess import Preprocess, to_model_input
from ferlab.models import create_model

OFF = dict(hflip=0.0, rotate=0.0, scale=0.0, translate=0.0, erase=0.0, noise=0.0)


def only(**on) -> AugmentConfig:
    return AugmentConfig(**{**OFF, **on})


def gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


@pytest.fixture(scope="module")
def batch(fer_slice) -> torch.Tensor:
    """64 real faces as the model sees them: (64, 1, 48, 48), FER2013-normalised float32."""
    return to_model_input(fer_slice["pixels"][::5][:64], Preprocess())


def test_shape_dtype_and_range_kept(batch):
    rgb = batch.expand(-1, 3, -1, -1).contiguous()
    for x in (batch, rgb, batch[:1]):
        out = augment(x, AugmentConfig(), gen(0))
        assert out.shape == x.shape and out.dtype == x.dtype and torch.isfinite(out).all()
    # bilinear sampling with border padding interpolates between pixels; erasing writes 0 (mean grey)
    out = augment(batch, AugmentConfig(), gen(0))
    lo, hi = min(batch.min().item(), 0.0), max(batch.max().item(), 0.0)
    assert lo - 1e-4 <= out.min().item() and out.max().item() <= hi + 1e-4
    assert (out - batch).abs().amax((1, 2, 3)).gt(1e-3).float().mean() > 0.9  # nearly every face changed


def test_seeded_generator_is_deterministic(batch):
    cfg = AugmentConfig(noise=0.1)
    a, b = augment(batch, cfg, gen(7)), augment(batch, cfg, gen(7))
    assert torch.equal(a, b)
    assert not torch.allclose(a, augment(batch, cfg, gen(8)))


def test_disabled_config_returns_the_input(batch):
    cfg = only()
    assert not cfg.enabled and augment(batch, cfg, gen(0)) is batch
    assert AugmentConfig().enabled and only(noise=0.1).enabled


def test_hflip_alone_mirrors(batch):
    torch.testing.assert_close(augment(batch, only(hflip=1.0), gen(0)), batch.flip(-1), atol=1e-5, rtol=0)
    torch.testing.assert_close(augment(batch, only(hflip=1e-9), gen(0)), batch, atol=1e-5, rtol=0)


def test_erase_zeroes_one_rectangle(batch):
    cfg = only(erase=1.0, erase_area=(0.05, 0.15))
    out = augment(batch, cfg, gen(3))
    h, w = batch.shape[-2:]
    for x, y in zip(batch[:, 0], out[:, 0]):
        zero = (y == 0) & (x != 0)
        rows, cols = zero.any(1).nonzero().flatten(), zero.any(0).nonzero().flatten()
        assert len(rows) and len(cols), "erase=1 must erase every face"
        r0, r1, c0, c1 = rows.min(), rows.max() + 1, cols.min(), cols.max() + 1
        assert (y[r0:r1, c0:c1] == 0).all()  # the erased pixels fill their bounding box: a rectangle
        assert 0.02 <= (r1 - r0) * (c1 - c0) / (h * w) <= 0.25
        keep = torch.ones_like(zero)
        keep[r0:r1, c0:c1] = False
        torch.testing.assert_close(y[keep], x[keep], atol=1e-5, rtol=0)  # nothing else moves
    assert not torch.equal(out, augment(batch, only(erase=0.5, erase_area=(0.05, 0.15)), gen(3)))


def test_noise_has_the_configured_scale(batch):
    diff = augment(batch, only(noise=0.4), gen(5)) - batch
    per_face = diff.std((1, 2, 3))  # each face draws its own sigma in [0, 0.4]
    assert per_face.max() <= 0.4 * 1.1 and per_face.max() > 0.3 and per_face.min() < 0.1
    assert per_face.mean().item() == pytest.approx(0.2, abs=0.06)
    assert diff.mean().abs() < 0.02


def test_geometry_ops():
    """On an odd-sized column ramp: rotation and zoom fix the centre pixel, a shift moves every pixel by at most
    translate x width, and a zoom in [0.8, 1.2] moves a pixel at distance d by at most d x (1/0.8 - 1)."""
    n = 49
    ramp = torch.arange(n, dtype=torch.float32).expand(8, 1, n, n).contiguous()
    inner = (slice(None), 0, slice(8, -8), slice(8, -8))  # away from the border padding
    for cfg in (only(rotate=10.0), only(scale=0.2)):
        out = augment(ramp, cfg, gen(1))
        torch.testing.assert_close(out[:, 0, n // 2, n // 2], ramp[:, 0, n // 2, n // 2], atol=1e-3, rtol=0)
        assert (out - ramp).abs().amax() > 0.5
    shifted = augment(ramp, only(translate=0.1), gen(1))
    moved = (shifted - ramp)[inner]
    assert moved.abs().max() <= 0.1 * n + 1e-3 and moved.abs().amax((1, 2)).gt(0.5).any()
    assert torch.allclose(moved, moved[:, :1, :1], atol=1e-3)  # a shift moves the whole face alike
    zoomed = (augment(ramp, only(scale=0.2), gen(1)) - ramp)[inner]
    assert zoomed.abs().max() <= (1 / 0.8 - 1) * (n // 2 - 8) + 1e-3


def test_evaluation_never_augments(fer_slice, monkeypatch):
    """evaluate/predict_probs take no augmentation config and never call augment; train_one_epoch does, once
    per step, on the training faces preprocessed exactly as evaluation preprocesses them."""
    images = torch.from_numpy(fer_slice["pixels"][:48])
    labels = torch.from_numpy(fer_slice["labels"][:48])
    cfg = TrainConfig(model="simple_cnn", input_size=48, in_channels=1, standardize=True, batch_size=16,
                      epochs=1, optimizer="adam", lr=1e-3, schedule="constant", warmup_epochs=0, device="cpu")
    pre = build_preprocess(cfg)
    torch.manual_seed(0)
    model = create_model("simple_cnn", in_channels=1, input_size=48).eval()
    dev = torch.device("cpu")
    before = predict_probs(model, images, pre, dev)

    seen = []

    def spy(x, aug_cfg, generator=None):
        seen.append((x.clone(), aug_cfg))
        return x.flip(-1)

    monkeypatch.setattr(trainer, "augment", spy)
    torch.testing.assert_close(predict_probs(model, images, pre, dev), before, atol=0, rtol=0)
    evaluate(model, images, labels, pre, dev, tta=True)
    assert seen == []

    opt = make_optimizer(cfg, model)
    trainer.train_one_epoch(model, images, labels, pre, opt, make_scheduler(cfg, opt, 3), cfg, 1, dev,
                            progress=False)
    assert len(seen) == 3 and all(a is cfg.augment for _, a in seen)
    inputs = to_model_input(images, pre).flatten(1)
    exact = "donot_use_mm_for_euclid_dist"
    for x, _ in seen:  # every training face is one of the inputs, through the one preprocessing path
        assert torch.cdist(x.flatten(1), inputs, compute_mode=exact).min(1).values.max() < 1e-4


# ------------------------------------------------------------------------------------------------ degradations

@pytest.fixture(scope="module")
def faces(fer_slice) -> np.ndarray:
    """64 real 48x48 uint8 faces."""
    return np.ascontiguousarray(fer_slice["pixels"][::5][:64])


def _cv2_jpeg(faces: np.ndarray, quality: int) -> np.ndarray:
    return np.stack([cv2.imdecode(cv2.imencode(".jpg", f, [cv2.IMWRITE_JPEG_QUALITY, quality])[1],
                                  cv2.IMREAD_GRAYSCALE) for f in faces]).astype(np.float32)


@pytest.mark.parametrize("quality", [10, 20, 50])
def test_batched_jpeg_is_libjpegs_lossy_step(faces, quality):
    """The batched DCT quantisation lands within half a grey level (mean) of OpenCV's real JPEG round trip,
    which moves the faces by several grey levels: the same compression, not just some blur."""
    x = torch.from_numpy(faces).float()
    ours = jpeg_compress(x, torch.full((len(x),), float(quality))).numpy()
    ref = _cv2_jpeg(faces, quality)
    loss = np.abs(ref - faces).mean()
    assert loss > 4  # JPEG at these qualities really changes the faces ...
    assert np.abs(ours - ref).mean() < 0.5 and np.abs(ours - ref).mean() < loss / 10  # ... and ours the same way
    assert ours.min() >= 0 and ours.max() <= 255 and np.array_equal(ours, np.round(ours))


def test_jpeg_tables_scale_as_libjpeg():
    t = jpeg_tables(torch.tensor([50.0, 100.0, 10.0, 1.0]))
    assert t[0, 0, 0] == 16 and t[0, 7, 7] == 99  # quality 50: the standard table itself
    assert (t[1] == 1).all()  # quality 100: no quantisation
    assert t[2, 0, 0] == 80 and (t[3] == 255).all()  # 10: five times coarser; 1: clipped to 255


def test_jpeg_of_an_odd_sized_face_keeps_its_size(faces):
    x = torch.from_numpy(faces[:4, :45, :43].copy()).float()
    out = jpeg_compress(x, torch.full((4,), 20.0))
    assert out.shape == x.shape and (out - x).abs().mean() > 2


def test_per_face_blur_is_opencvs_gaussian(faces):
    x = torch.from_numpy(faces[:3]).float()
    sigmas = [0.5, 1.0, 1.5]
    ours = gaussian_blur(x, torch.tensor(sigmas)).numpy()
    for face, sigma, out in zip(faces[:3], sigmas, ours):
        ref = cv2.GaussianBlur(face.astype(np.float32), (9, 9), sigma, borderType=cv2.BORDER_REFLECT_101)
        np.testing.assert_allclose(out, ref, atol=1e-3)


DEGRADE_OFF = dict(gamma=0.0, blur=0.0, downscale=0.0, jpeg=0.0)


def test_degrade_off_is_the_faces_as_floats(faces):
    assert not AugmentConfig().degrades
    out = degrade(torch.from_numpy(faces), AugmentConfig(), gen(0))
    assert out.dtype == torch.float32 and torch.equal(out, torch.from_numpy(faces).float())


@pytest.mark.parametrize("op", ["gamma", "blur", "downscale", "jpeg"])
def test_each_degradation_changes_the_share_of_faces_it_is_given(faces, op):
    x = torch.from_numpy(faces)
    every = degrade(x, AugmentConfig(**{**DEGRADE_OFF, op: 1.0}), gen(2))
    changed = (every - x.float()).abs().amax((1, 2)) > 0.5
    assert changed.float().mean() > 0.9 and every.min() >= 0 and every.max() <= 255
    half = degrade(x, AugmentConfig(**{**DEGRADE_OFF, op: 0.5}), gen(2))
    share = ((half - x.float()).abs().amax((1, 2)) > 1e-4).float().mean().item()
    assert 0.25 < share < 0.75
    assert torch.equal(half, degrade(x, AugmentConfig(**{**DEGRADE_OFF, op: 0.5}), gen(2)))  # seeded
    assert not torch.equal(half, degrade(x, AugmentConfig(**{**DEGRADE_OFF, op: 0.5}), gen(3)))


def test_degradations_lose_detail_and_gamma_moves_brightness(faces):
    x = torch.from_numpy(faces).float()

    def detail(y):  # mean absolute difference between neighbouring pixels
        return (y[:, :, 1:] - y[:, :, :-1]).abs().mean().item()

    for op in ("blur", "downscale"):
        assert detail(degrade(x, AugmentConfig(**{**DEGRADE_OFF, op: 1.0}), gen(4))) < 0.8 * detail(x)
    dark = degrade(x, AugmentConfig(**{**DEGRADE_OFF, "gamma": 1.0, "gamma_range": (2.0, 2.0)}), gen(4))
    torch.testing.assert_close(dark, 255 * (x / 255) ** 2, atol=1e-3, rtol=0)


def test_training_degrades_before_preprocessing_and_evaluation_never(fer_slice, monkeypatch):
    images = torch.from_numpy(fer_slice["pixels"][:48])
    labels = torch.from_numpy(fer_slice["labels"][:48])
    cfg = TrainConfig(model="simple_cnn", input_size=48, in_channels=1, standardize=True, batch_size=16,
                      epochs=1, optimizer="adam", lr=1e-3, schedule="constant", warmup_epochs=0, device="cpu",
                      augment=dict(jpeg=1.0))
    pre = build_preprocess(cfg)
    model = create_model("simple_cnn", in_channels=1, input_size=48)
    dev = torch.device("cpu")
    seen = []
    real = trainer.degrade

    def spy(x, aug_cfg, generator=None):
        seen.append(x.clone())
        return real(x, aug_cfg, generator)

    monkeypatch.setattr(trainer, "degrade", spy)
    evaluate(model, images, labels, pre, dev, tta=True)
    assert seen == []
    opt = make_optimizer(cfg, model)
    trainer.train_one_epoch(model, images, labels, pre, opt, make_scheduler(cfg, opt, 3), cfg, 1, dev,
                            progress=False)
    assert len(seen) == 3 and all(x.dtype == torch.uint8 and x.shape[1:] == (48, 48) for x in seen)


# ------------------------------------------------------------------------------------------------ mixing faces

def _mixed(batch, cfg, seed):
    """mix() of the faces with one-hot targets naming each face's own place: row i of the mixed target holds
    face i's share and its partner's."""
    eye = torch.eye(len(batch))
    x, t = mix(batch, eye, cfg, gen(seed))
    return x, t, eye


def test_mixup_blends_each_face_with_one_partner_by_the_targets_shares(batch):
    before = batch.clone()
    x, t, _ = _mixed(batch, only(mixup=1.0), 3)
    assert torch.equal(batch, before)  # the input is not written to
    torch.testing.assert_close(t.sum(1), torch.ones(len(t)))
    assert ((t > 0).sum(1) <= 2).all()  # own share + one partner's
    lam = t.diagonal()
    assert 0.0 < lam[0] < 1.0 and torch.allclose(lam[(lam < 1)], lam[(lam < 1)][0])  # one share for the batch
    expected = (t @ batch.flatten(1)).view(batch.shape)  # lam x face + (1 - lam) x partner, face by face
    torch.testing.assert_close(x, expected, atol=1e-5, rtol=0)
    moved = (x - batch).abs().amax((1, 2, 3)) > 1e-3
    assert moved.float().mean() > 0.9  # a permutation leaves few faces with themselves


def test_cutmix_pastes_one_box_of_the_partner_and_the_target_follows_its_area(batch):
    x, t, _ = _mixed(batch, only(cutmix=1.0), 5)
    partner = t.clone().fill_diagonal_(0).argmax(1)
    paired = t.diagonal() < 1
    assert paired.sum() > 0.9 * len(t)
    changed = (x != batch).any(1)  # (B, H, W): where each face now differs from itself
    from_partner = torch.isclose(x, batch[partner]).all(1)
    ys, xs = torch.nonzero(changed.any(0), as_tuple=True)
    box = torch.zeros_like(changed[0])
    box[ys.min():ys.max() + 1, xs.min():xs.max() + 1] = True  # one rectangle, the same for every face
    for i in torch.nonzero(paired).flatten():
        assert from_partner[i][box].all() and torch.equal(x[i][:, ~box], batch[i][:, ~box])
    area = box.float().mean()
    assert 0 < area < 1
    torch.testing.assert_close(t.diagonal()[paired], torch.full((int(paired.sum()),), 1 - area.item()))
    torch.testing.assert_close(t.sum(1), torch.ones(len(t)))


def test_mixing_is_seeded_off_by_default_and_mix_prob_sets_the_share_of_batches(batch):
    assert not AugmentConfig().mixes and not only(mixup=0.4, mix_prob=0.0).mixes
    eye = torch.eye(len(batch))
    x, t = mix(batch, eye, AugmentConfig(), gen(0))
    assert x is batch and t is eye
    a, b = mix(batch, eye, only(mixup=0.4, cutmix=1.0), gen(9)), mix(batch, eye, only(mixup=0.4, cutmix=1.0), gen(9))
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
    g, four, small = gen(11), batch[:4], eye[:4, :4]
    mixed = [mix(four, small, only(mixup=1.0, mix_prob=0.3), g)[1] is not small for _ in range(400)]
    assert 0.22 < sum(mixed) / 400 < 0.38


def test_alpha_shapes_the_share_and_both_on_takes_each_half_the_time(batch):
    """Beta(0.2, 0.2) puts most shares near 0 or 1, Beta(4, 4) near one half; with both on, about half the
    batches are CutMix (targets in steps of whole pixels over a box) and half mixup."""
    eight, eye = batch[:8], torch.eye(8)

    def shares(cfg, n=300):  # the batch's share: the smallest own share (faces left with themselves keep all)
        g = gen(21)
        return torch.tensor([mix(eight, eye, cfg, g)[1].diagonal().min().item() for _ in range(n)])

    low, high = shares(only(mixup=0.2)), shares(only(mixup=4.0))
    assert ((low > 0.1) & (low < 0.9)).float().mean() < 0.5 < ((high > 0.1) & (high < 0.9)).float().mean()
    assert abs(high.mean() - 0.5) < 0.05
    g, cut = gen(22), 0
    for _ in range(300):
        x, t = mix(eight, eye, only(mixup=1.0, cutmix=1.0), g)
        partner = (t - eye * t.diagonal()).argmax(1)
        cut += bool(((x == eight) | (x == eight[partner])).all())  # CutMix copies pixels; mixup blends them
    assert 0.4 < cut / 300 < 0.6


def test_training_mixes_the_augmented_faces_with_smoothed_targets_before_the_teacher(fer_slice, monkeypatch):
    images = torch.from_numpy(fer_slice["pixels"][:48])
    labels = torch.from_numpy(fer_slice["labels"][:48])
    cfg = TrainConfig(model="simple_cnn", input_size=48, in_channels=1, standardize=True, batch_size=16,
                      epochs=1, optimizer="adam", lr=1e-3, schedule="constant", warmup_epochs=0, device="cpu",
                      label_smoothing=0.1, augment=dict(cutmix=1.0))
    pre = build_preprocess(cfg)
    model = create_model("simple_cnn", in_channels=1, input_size=48)
    dev = torch.device("cpu")
    calls, taught = [], []
    real = trainer.mix

    def spy(x, target, aug_cfg, generator=None):
        out = real(x, target, aug_cfg, generator)
        calls.append((x.clone(), target.clone(), out[0].clone()))
        return out

    class Teacher(torch.nn.Module):
        def forward(self, x):
            taught.append(x.clone())
            return torch.zeros(len(x), 7)

    monkeypatch.setattr(trainer, "mix", spy)
    evaluate(model, images, labels, pre, dev, tta=True)
    assert calls == []
    opt = make_optimizer(cfg, model)
    out = trainer.train_one_epoch(model, images, labels, pre, opt, make_scheduler(cfg, opt, 3), cfg, 1, dev,
                                  progress=False, teacher=Teacher().eval(), num_classes=7)
    assert len(calls) == 3 and np.isfinite(out["loss"])
    for step, (x, target, mixed) in enumerate(calls):
        y = labels[torch.randperm(48, generator=torch.Generator().manual_seed(cfg.seed * 100_003 + 1))][
            step * 16:(step + 1) * 16]
        # label smoothing 0.1 over 7 classes, as cross_entropy would have applied it
        torch.testing.assert_close(target, torch.nn.functional.one_hot(y, 7).float() * 0.9 + 0.1 / 7)
        assert x.dtype == torch.float32 and x.shape == (16, 1, 48, 48)
        assert torch.equal(taught[step], mixed)  # the teacher sees the mixed faces
    with pytest.raises(ValueError, match="needs num_classes"):  # labels cannot become targets of unknown width
        trainer.train_one_epoch(model, images, labels, pre, opt, make_scheduler(cfg, opt, 3), cfg, 1, dev,
                                progress=False)
