"""Shared fixtures: real FER2013 faces, sliced at test time from the development archive.

Nothing from the dataset is committed: every test input is built here from
../shared/data/fer2013.tar.gz (or $FERLAB_TEST_DATA).
"""
from __future__ import annotations

import io
import os
import tarfile
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

REPO = Path(__file__).resolve().parents[1]
ARCHIVE = Path(os.environ.get("FERLAB_TEST_DATA", REPO.parent / "shared" / "data" / "fer2013.tar.gz"))
CLASSES = ("angry", "disgust", "fear", "happy", "sad", "surprise", "neutral")
PER_CELL = 24  # images per (usage, class) in the slice


@pytest.fixture(scope="session", autouse=True)
def _isolated_cache(tmp_path_factory):
    """Tests never read or write the user's array cache."""
    old = os.environ.get("FERLAB_CACHE")
    os.environ["FERLAB_CACHE"] = str(tmp_path_factory.mktemp("ferlab-cache"))
    yield
    if old is None:
        os.environ.pop("FERLAB_CACHE", None)
    else:
        os.environ["FERLAB_CACHE"] = old


@pytest.fixture(scope="session")
def fer_archive() -> Path:
    if not ARCHIVE.exists():
        pytest.fail(f"FER2013 development archive not found at {ARCHIVE}; set FERLAB_TEST_DATA")
    return ARCHIVE


@pytest.fixture(scope="session")
def fer_slice(fer_archive) -> dict:
    """Up to PER_CELL real faces per (usage, class): raw JPEG bytes, decoded pixels, labels, usage."""
    want = {}
    out = {"names": [], "jpeg": [], "pixels": [], "labels": [], "usage": []}
    with tarfile.open(fer_archive) as tf:
        for m in tf:
            if not m.isfile() or not m.name.endswith(".jpg"):
                continue
            parts = Path(m.name).parts
            cls, fname = parts[-2], parts[-1]
            usage = fname.split("_")[0]
            key = (usage, cls)
            if want.get(key, 0) >= PER_CELL:
                continue
            want[key] = want.get(key, 0) + 1
            raw = tf.extractfile(m).read()
            out["names"].append("/".join(parts[-3:]))
            out["jpeg"].append(raw)
            out["pixels"].append(np.asarray(Image.open(io.BytesIO(raw)).convert("L")))
            out["labels"].append(CLASSES.index(cls))
            out["usage"].append(usage)
    out["pixels"] = np.stack(out["pixels"])
    out["labels"] = np.array(out["labels"])
    return out


@pytest.fixture(scope="session")
def fer_folder(fer_slice, tmp_path_factory) -> Path:
    """The slice in the Kaggle folder layout: root/train/<class>/Training_*.jpg, root/test/<class>/..."""
    root = tmp_path_factory.mktemp("fer-folder") / "fer2013"
    for name, raw in zip(fer_slice["names"], fer_slice["jpeg"]):
        p = root / name
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_bytes(raw)
    return root


@pytest.fixture(scope="session")
def calibrated_run(fer_folder, tmp_path_factory) -> Path:
    """A run folder from two quick epochs of simple_cnn on the real slice, as `fit` leaves it (best.pt holds
    the temperature fitted on the validation split)."""
    import torch

    from ferlab.engine import TrainConfig, fit
    out = tmp_path_factory.mktemp("calibrated")
    threads = torch.get_num_threads()
    cfg = TrainConfig(name="cal", model="simple_cnn", input_size=48, in_channels=1, mean=[0.0], std=[1.0],
                      standardize=True, data=str(fer_folder), split="official", seed=3, epochs=2, batch_size=16,
                      optimizer="adam", lr=1e-3, weight_decay=0.0, schedule="constant", warmup_epochs=0,
                      threads=1, device="cpu", tta=True, out_dir=str(out))
    try:
        fit(cfg, progress=False)
    finally:
        torch.set_num_threads(threads)
    return out / "cal"
