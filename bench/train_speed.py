"""Training speed, side by side on one machine: the seed's pipeline against ferlab's, and every new model.

    python bench/train_speed.py --data /path/to/fer2013 [--steps 3] [--threads 1] [--models vgg_s,resnet_s]

Rows (each: a few timed optimizer steps after warm-up, on real FER2013 Training faces):
  seed            enhanced_cnn_v2 at 3x128x128, fp32, batch 32, Adam, fed as the seed fed it: a torch
                  Dataset that turns one uint8 face at a time into a PIL image, copies it to RGB, resizes it
                  to 128 px and converts it to a tensor, batched by a DataLoader (no workers, no augmentation).
  ferlab          the same model at FER2013's native 1x48x48 through ferlab's pipeline: whole-batch
                  `to_model_input` + batched `augment` (default AugmentConfig), channels_last; fp32 and bf16.
  each new model  vgg_s/m/l, resnet_s/m/18 in ferlab's pipeline, batch --batch-size, SGD; fp32 and bf16.

For each row: training images/s, the model's training FLOPs per image (conv and linear multiply-adds counted
with forward hooks, x2 for FLOPs, x3 for forward + backward), the GFLOP/s that makes, its share of this
machine's peak (a large fp32 or bf16 matmul, measured here) and the share of step time spent producing the
batch (decoding, resizing, augmentation, batching) rather than in the model. Prints Markdown tables.
Numbers taken while other jobs share the CPU are not comparable with numbers from an idle machine.
"""
from __future__ import annotations

import argparse
import platform
import time

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
from PIL import Image
from torch.utils.data import DataLoader, Dataset

from ferlab.data import load_fer2013, make_splits
from ferlab.data.augment import AugmentConfig, augment
from ferlab.engine import TrainConfig
from ferlab.engine.config import PRECISIONS
from ferlab.engine.predict import autocast, resolve_device
from ferlab.engine.trainer import build_preprocess, make_optimizer
from ferlab.inference.preprocess import to_model_input
from ferlab.models import count_params, create_model, list_models

NEW_MODELS = ("vgg_s", "vgg_m", "vgg_l", "resnet_s", "resnet_m", "resnet18")
SEED_MODEL = "enhanced_cnn_v2"
SEED_OPTIM = dict(optimizer="adam", lr=4e-5, weight_decay=8e-4)  # the seed's iteration-5 recipe


class SeedFaces(Dataset):
    """The seed's input path: one face at a time through PIL, grey copied to RGB, resized, to a float tensor."""

    def __init__(self, faces: np.ndarray, labels: np.ndarray, size: int = 128):
        self.faces, self.labels, self.size = faces, labels, size

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i):
        im = Image.fromarray(self.faces[i]).convert("RGB").resize((self.size, self.size), Image.BILINEAR)
        x = torch.from_numpy(np.asarray(im, dtype=np.float32) / 255.0).permute(2, 0, 1)
        return x, int(self.labels[i])


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def train_flops_per_image(model: nn.Module, shape: tuple[int, int, int], device: torch.device) -> float:
    """Training FLOPs per image: 2 x (conv + linear multiply-adds of one forward pass) x 3 (forward + backward)."""
    macs = [0]

    def conv(m, inp, out):
        macs[0] += out.numel() * (m.in_channels // m.groups) * m.kernel_size[0] * m.kernel_size[1]

    def linear(m, inp, out):
        macs[0] += out.numel() * m.in_features

    hooks = [m.register_forward_hook(conv if isinstance(m, nn.Conv2d) else linear)
             for m in model.modules() if isinstance(m, (nn.Conv2d, nn.Linear))]
    was_training = model.training
    model.eval()
    with torch.no_grad():
        model(torch.zeros(1, *shape, device=device))
    model.train(was_training)
    for h in hooks:
        h.remove()
    return 3 * 2 * macs[0]


def matmul_peak(dtype: torch.dtype, device: torch.device, n: int, min_s: float = 0.5) -> float:
    """GFLOP/s of an n x n x n matmul in `dtype`, repeated for at least min_s seconds."""
    a = torch.randn(n, n, device=device).to(dtype)
    b = torch.randn(n, n, device=device).to(dtype)
    a @ b
    sync(device)
    reps, t0 = 0, time.perf_counter()
    while time.perf_counter() - t0 < min_s:
        a @ b
        reps += 1
        sync(device)
    return 2 * n ** 3 * reps / (time.perf_counter() - t0) / 1e9


def timed_steps(next_batch, model, optimizer, device, precision: str, steps: int, warmup: int) -> dict:
    """Seconds spent producing batches and in forward + backward + optimizer step, over the timed steps."""
    model.train()
    data_s = model_s = 0.0
    images = 0
    for i in range(warmup + steps):
        t0 = time.perf_counter()
        x, y = next_batch()
        sync(device)
        t1 = time.perf_counter()
        with autocast(device, precision):
            loss = F.cross_entropy(model(x).float(), y)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        sync(device)
        t2 = time.perf_counter()
        if i >= warmup:
            data_s, model_s, images = data_s + t1 - t0, model_s + t2 - t1, images + len(y)
    return {"images_per_s": images / (data_s + model_s), "data_share": data_s / (data_s + model_s)}


def seed_row(faces, labels, device, args) -> dict:
    torch.manual_seed(0)
    model = create_model(SEED_MODEL, in_channels=3, input_size=128).to(device)
    optimizer = make_optimizer(TrainConfig(model=SEED_MODEL, **SEED_OPTIM), model)
    loader = DataLoader(SeedFaces(faces, labels), batch_size=32, shuffle=True, drop_last=True, num_workers=0)
    batches = iter(loader)

    def next_batch():
        nonlocal batches
        try:
            x, y = next(batches)
        except StopIteration:
            batches = iter(loader)
            x, y = next(batches)
        return x.to(device), y.to(device)

    res = timed_steps(next_batch, model, optimizer, device, "fp32", args.steps, args.warmup)
    return {"config": f"seed: {SEED_MODEL}, per-image PIL loading", "input": "3x128x128", "precision": "fp32",
            "batch": 32, "params": count_params(model),
            "flops": train_flops_per_image(model, (3, 128, 128), device), **res}


def ferlab_row(name: str, precision: str, batch: int, faces, labels, device, args, **cfg_kw) -> dict:
    cfg = TrainConfig(model=name, batch_size=batch, precision=precision, **cfg_kw)
    pre = build_preprocess(cfg)
    torch.manual_seed(0)
    model = create_model(name, in_channels=pre.in_channels, input_size=pre.input_size).to(device)
    model = model.to(memory_format=torch.channels_last)
    optimizer = make_optimizer(cfg, model)
    faces_t, labels_t = torch.from_numpy(faces), torch.from_numpy(labels)
    gen = torch.Generator().manual_seed(0)
    aug = AugmentConfig()

    def next_batch():  # what train_one_epoch does per step
        idx = torch.randint(len(labels_t), (batch,), generator=gen)
        x = augment(to_model_input(faces_t[idx], pre, device), aug, gen)
        return x.contiguous(memory_format=torch.channels_last), labels_t[idx].to(device)

    res = timed_steps(next_batch, model, optimizer, device, precision, args.steps, args.warmup)
    shape = (pre.in_channels, pre.input_size, pre.input_size)
    return {"config": f"ferlab: {name}", "input": "x".join(map(str, shape)), "precision": precision,
            "batch": batch, "params": count_params(model), "flops": train_flops_per_image(model, shape, device),
            **res}


def load_faces(data: str | None, n: int) -> tuple[np.ndarray, np.ndarray, str]:
    if data:
        train = make_splits(load_fer2013(data), "official")["train"]
        pick = np.random.default_rng(0).permutation(len(train))[:n]
        return train.images[pick], train.labels[pick], f"{len(pick)} real FER2013 Training faces from {data}"
    rng = np.random.default_rng(0)
    faces = rng.integers(0, 256, (n, 48, 48), dtype=np.uint8)
    return faces, rng.integers(0, 7, n).astype(np.int64), \
        f"NO --data GIVEN: {n} random uint8 48x48 'faces' (speed only; decoding real faces costs the same)"


def machine(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next(ln.split(":", 1)[1].strip() for ln in f if ln.startswith("model name"))
    except (OSError, StopIteration):
        pass
    return f"{cpu}, {torch.get_num_threads()} thread(s)"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--data", help="FER2013 location (default: random uint8 faces, said in the output)")
    p.add_argument("--steps", type=int, default=3, help="timed optimizer steps per row (default: 3)")
    p.add_argument("--warmup", type=int, default=1, help="untimed steps first (default: 1)")
    p.add_argument("--threads", type=int, default=0, help="torch CPU threads (default: torch's choice)")
    p.add_argument("--models", default=",".join(NEW_MODELS), help=f"new models (default: {','.join(NEW_MODELS)})")
    p.add_argument("--batch-size", type=int, default=64, help="batch of the new models (default: 64)")
    p.add_argument("--precisions", default="fp32,bf16", help="for ferlab rows (default: fp32,bf16)")
    p.add_argument("--device", default="auto", help="cpu, cuda, cuda:1 (default: cuda when available)")
    p.add_argument("--no-seed", action="store_true", help="skip the seed's and enhanced_cnn_v2's rows")
    args = p.parse_args()
    models = [m for m in args.models.split(",") if m]
    precisions = [q for q in args.precisions.split(",") if q]
    for q in precisions:
        if q not in PRECISIONS:
            p.error(f"--precisions: {q!r} is not one of {', '.join(PRECISIONS)}")
    for m in models:
        if m not in list_models():
            p.error(f"--models: {m!r} is not a registered model; registered: {', '.join(list_models())}")
    if args.threads > 0:
        torch.set_num_threads(args.threads)
    device = resolve_device(args.device)

    faces, labels, source = load_faces(args.data, max(2048, (args.steps + args.warmup) * max(args.batch_size, 32)))
    print(f"torch {torch.__version__} on {device} ({machine(device)}); data: {source}")
    print(f"{args.warmup} warm-up + {args.steps} timed steps per row\n", flush=True)

    n = 8192 if device.type == "cuda" else 1024
    peak = {"fp32": matmul_peak(torch.float32, device, n), "bf16": matmul_peak(torch.bfloat16, device, n)}
    print(f"| peak ({n}^3 matmul) | GFLOP/s |\n|---|---|\n| fp32 | {peak['fp32']:.0f} |\n"
          f"| bf16 | {peak['bf16']:.0f} |\n", flush=True)

    rows = []
    if not args.no_seed:
        rows.append(seed_row(faces, labels, device, args))
        seed_kw = dict(input_size=48, in_channels=1, mean=[0.0], std=[1.0], standardize=True, **SEED_OPTIM)
        rows += [ferlab_row(SEED_MODEL, q, 32, faces, labels, device, args, **seed_kw) for q in precisions]
    for m in models:
        rows += [ferlab_row(m, q, args.batch_size, faces, labels, device, args) for q in precisions]

    base = rows[0]["images_per_s"] if not args.no_seed else None
    head = ["config", "input", "precision", "batch", "params", "train GFLOP/image", "images/s", "GFLOP/s",
            "% of peak", "data share"] + (["vs seed"] if base else [])
    print("| " + " | ".join(head) + " |\n|" + "---|" * len(head))
    for r in rows:
        gflops = r["images_per_s"] * r["flops"] / 1e9
        cells = [r["config"], r["input"], r["precision"], str(r["batch"]), f"{r['params'] / 1e6:.2f}M",
                 f"{r['flops'] / 1e9:.3f}", f"{r['images_per_s']:.0f}", f"{gflops:.1f}",
                 f"{100 * gflops / peak[r['precision']]:.0f}%", f"{100 * r['data_share']:.1f}%"]
        if base:
            cells.append(f"{r['images_per_s'] / base:.1f}x")
        print("| " + " | ".join(cells) + " |", flush=True)


if __name__ == "__main__":
    main()
