"""The training loop: `train_one_epoch` and `evaluate` return metrics; `fit` wires a run folder around them.

Runs unchanged in one process or under `torchrun` (DistributedDataParallel): every rank draws the same
epoch permutation and takes its own slice of it; metrics are summed across ranks; only rank 0 writes.
"""
from __future__ import annotations

import copy
import dataclasses
import hashlib
import json
import math
import os
import socket
import subprocess
import sys
import time
from contextlib import suppress
from datetime import timedelta
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
import torch.nn.functional as F
import yaml
from tqdm import tqdm

from .._atomic import WriteError, replacing
from ..data import load_fer2013, make_splits
from ..data.augment import augment, degrade, mix
from ..data.corruptions import corrupt
from ..data.ferplus import classes_for, left_out, relabel, train_targets
from ..inference.preprocess import Preprocess, to_model_input
from ..models import count_params, create_model, model_defaults
from .calibration import calibrate_checkpoint, expected_calibration_error
from .callbacks import Callback, CSVLogger, PrintLogger, WandbLogger
from .checkpoint import (checkpoint_path, file_sha256, load_checkpoint, model_from_checkpoint, save_checkpoint,
                         write_checkpoint)
from .config import TrainConfig, resume_config
from .metrics import classification_report, format_summary
from .plots import plot_confusion, plot_curves, read_metrics
# the device, precision and TTA views evaluation uses; also importable from here, where they used to live
from .predict import (TTA_MODES, autocast, predict_probs, predict_probs_tta, predict_view_logits,  # noqa: F401
                      resolve_device, run_precision, tta_views)
from .sam import sharpness_aware_grads

# `distill_views: clean`: the teacher's probabilities on the training faces, kept in the run folder for --resume
TEACHER_PROBS = "teacher_probs.pt"


# ----------------------------------------------------------------------------------------------- setup

def build_preprocess(cfg: TrainConfig) -> Preprocess:
    """The model's registered preprocessing, with any size/channel/normalisation override from the config."""
    d = model_defaults(cfg.model)
    channels = cfg.in_channels or d.get("in_channels", 1)
    mean = cfg.mean or list(d.get("mean", (0.0,)))
    std = cfg.std or list(d.get("std", (1.0,)))
    if len(mean) != channels:  # one grey statistic serves every copied channel
        mean, std = [mean[0]] * channels, [std[0]] * channels
    standardize = d.get("standardize", False) if cfg.standardize is None else cfg.standardize
    return Preprocess(cfg.input_size or d.get("input_size", 48), channels, tuple(mean), tuple(std),
                      bool(standardize))


class DistInfo:
    """Rank/world of this process; world 1 when not launched by torchrun (or when given env={})."""

    def __init__(self, env=None):
        env = os.environ if env is None else env
        self.world = int(env.get("WORLD_SIZE", 1))
        self.rank = int(env.get("RANK", 0))
        self.local_rank = int(env.get("LOCAL_RANK", 0))

    @property
    def main(self) -> bool:
        return self.rank == 0

    def all_sum(self, values: list[float], device) -> list[float]:
        if self.world == 1:
            return values
        t = torch.tensor(values, dtype=torch.float64, device=device)
        dist.all_reduce(t)
        return t.tolist()

    def all_gather(self, obj) -> list:
        """Every rank's `obj`, in rank order (a sync point)."""
        if self.world == 1:
            return [obj]
        out = [None] * self.world
        dist.all_gather_object(out, obj)
        return out

    def broadcast(self, obj):
        """Rank 0's `obj` on every rank (a sync point)."""
        if self.world == 1:
            return obj
        box = [obj]
        dist.broadcast_object_list(box, src=0)
        return box[0]

    @torch.no_grad()
    def sync_buffers(self, module: torch.nn.Module) -> None:
        """Rank 0's buffers (BatchNorm running statistics) on every rank."""
        if self.world > 1:
            for b in module.buffers():
                dist.broadcast(b, src=0)


def git_commit() -> str | None:
    """HEAD of the git checkout ferlab's code lives in, or None (an installed wheel, no git): provenance only,
    so it never fails a run."""
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=Path(__file__).resolve().parent, capture_output=True,
                             text=True, timeout=10)
    except (OSError, subprocess.SubprocessError):
        return None
    commit = out.stdout.strip()
    return commit if out.returncode == 0 and commit else None


def provenance(dinfo: DistInfo) -> dict:
    """What makes runs comparable across machines: every rank's host name, the world size, torch's version and
    the code's git commit. Called on every rank (the host names are gathered)."""
    return {"hosts": dinfo.all_gather(socket.gethostname()), "world_size": dinfo.world, "torch": torch.__version__,
            "git_commit": git_commit() if dinfo.main else None}


def make_optimizer(cfg: TrainConfig, model: torch.nn.Module):
    # No weight decay on norms and biases: decaying BatchNorm scales only fights the normalisation.
    decay = [p for n, p in model.named_parameters() if p.ndim > 1]
    no_decay = [p for n, p in model.named_parameters() if p.ndim <= 1]
    if cfg.optimizer == "adam":  # the seed's optimizer: plain Adam, L2 weight decay on everything
        return torch.optim.Adam(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    groups = [{"params": decay, "weight_decay": cfg.weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    if cfg.optimizer == "adamw":
        return torch.optim.AdamW(groups, lr=cfg.lr)
    return torch.optim.SGD(groups, lr=cfg.lr, momentum=cfg.momentum, nesterov=cfg.nesterov)


def make_scheduler(cfg: TrainConfig, optimizer, steps_per_epoch: int):
    total = cfg.epochs * steps_per_epoch
    warm = int(cfg.warmup_epochs * steps_per_epoch)
    if cfg.schedule == "onecycle":
        return torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=cfg.lr, total_steps=total, pct_start=0.25)
    if cfg.schedule == "constant":
        return torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: 1.0)

    def factor(step):
        if step < warm:
            return (step + 1) / warm
        t = (step - warm) / max(1, total - warm)
        return 0.5 * (1 + math.cos(math.pi * min(t, 1.0)))
    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


class EMA:
    """Exponential moving average of the weights and of the BatchNorm statistics.

    The running statistics are averaged with the same decay: statistics copied from the live model would
    describe activations of weights the averaged model does not have.
    """

    def __init__(self, model: torch.nn.Module, decay: float):
        self.decay, self.module = decay, copy.deepcopy(model).eval()
        for p in self.module.parameters():
            p.requires_grad_(False)

    @torch.no_grad()
    def update(self, model: torch.nn.Module):
        for e, p in zip(self.module.parameters(), model.parameters()):
            e.lerp_(p.detach(), 1 - self.decay)
        for e, b in zip(self.module.buffers(), model.buffers()):
            if e.dtype.is_floating_point:
                e.lerp_(b, 1 - self.decay)
            else:
                e.copy_(b)


# ----------------------------------------------------------------------------------------------- loop

def train_one_epoch(model, images: torch.Tensor, labels: torch.Tensor, pre: Preprocess, optimizer, scheduler,
                    cfg: TrainConfig, epoch: int, device: torch.device, ema: EMA | None = None,
                    dinfo: DistInfo | None = None, progress: bool = True, targets: torch.Tensor | None = None,
                    teacher: torch.nn.Module | None = None, num_classes: int | None = None) -> dict:
    """One pass over the training split (this rank's share of it). Returns loss, accuracy, images/s.

    `targets` (N, classes): soft targets for the loss, label smoothing included, drawn in the same order as the
    faces; accuracy stays against `labels`. None: the loss takes `labels`, smoothed by cfg.label_smoothing.
    `teacher` (frozen, in eval mode): its probabilities on each augmented batch, softened by
    cfg.distill_temperature, make cfg.distill_weight of the target (`distilled_target`). With mixup or CutMix
    (cfg.augment) the faces and their targets (`num_classes` wide) are mixed before the teacher sees them."""
    dinfo = dinfo or DistInfo()
    model.train()
    gen = torch.Generator().manual_seed(cfg.seed * 100_003 + epoch)  # same on every rank, resumable
    perm = torch.randperm(len(labels), generator=gen)
    per_step = cfg.batch_size * dinfo.world
    steps = len(perm) // per_step  # drop the ragged last batch: BatchNorm dislikes a batch of 1
    aug_gen = torch.Generator().manual_seed(cfg.seed * 7_919 + epoch * 31 + dinfo.rank)
    loss_sum = correct = seen = 0.0
    t0 = time.perf_counter()
    bar = tqdm(range(steps), desc=f"epoch {epoch}/{cfg.epochs}", leave=False, disable=not progress or None,
               dynamic_ncols=True)
    for step in bar:
        idx = perm[step * per_step:(step + 1) * per_step][dinfo.rank::dinfo.world]
        faces = images[idx]
        if cfg.augment.degrades:
            faces = degrade(faces.to(device), cfg.augment, aug_gen)
        x = augment(to_model_input(faces, pre, device), cfg.augment, aug_gen)
        y = labels[idx].to(device, non_blocking=True)
        target = y if targets is None else targets[idx].to(device, non_blocking=True)
        smoothing = cfg.label_smoothing if targets is None else 0.0
        if cfg.augment.mixes:  # the targets are mixed with the faces, so soft from here on
            if target.dim() == 1:
                if num_classes is None:
                    raise ValueError("mixup / CutMix of class labels needs num_classes (the width of the targets)")
                target = soft_labels(target, num_classes, smoothing)
            x, target = mix(x, target, cfg.augment, aug_gen)
            smoothing = 0.0
        if cfg.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        if teacher is not None:
            with torch.no_grad(), autocast(device, cfg.precision):
                taught = teacher(x).float()
            target, smoothing = distilled_target(target, taught, cfg, taught.shape[1]), 0.0
        def forward(x=x, target=target, smoothing=smoothing):
            with autocast(device, cfg.precision):
                logits = model(x)
                return logits, F.cross_entropy(logits.float(), target, label_smoothing=smoothing)
        logits, loss = forward()
        if not torch.isfinite(loss):
            raise FloatingPointError(f"loss became {loss.item()} at epoch {epoch} step {step}; lower lr "
                                     f"(now {scheduler.get_last_lr()[0]:.2e}) or enable grad_clip")
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if cfg.sam_rho > 0:  # the step's gradient is taken again, at the worst point within sam_rho
            sharpness_aware_grads(model, lambda: forward()[1], cfg.sam_rho)
        if cfg.grad_clip > 0:
            torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
        optimizer.step()
        scheduler.step()
        if ema is not None:
            ema.update(model.module if hasattr(model, "module") else model)
        # .item() is a device sync point: pay it once per step for the running numbers shown
        n = len(idx)
        loss_sum += loss.item() * n
        correct += (logits.argmax(1) == y).sum().item()
        seen += n
        if progress and step % 20 == 0:
            bar.set_postfix(loss=f"{loss_sum / seen:.3f}", acc=f"{100 * correct / seen:.1f}")
    elapsed = time.perf_counter() - t0
    loss_sum, correct, seen = dinfo.all_sum([loss_sum, correct, seen], device)
    return {"loss": loss_sum / max(seen, 1), "accuracy": 100 * correct / max(seen, 1),
            "images_per_s": seen / elapsed, "time_s": elapsed}


def soft_labels(labels: torch.Tensor, num_classes: int, smoothing: float = 0.0) -> torch.Tensor:
    """Class indices (B,) -> one-hot rows (B, num_classes) with label smoothing: what cross_entropy's
    label_smoothing makes of them."""
    return F.one_hot(labels, num_classes).float() * (1 - smoothing) + smoothing / num_classes


def distilled_target(target: torch.Tensor, teacher_logits: torch.Tensor, cfg: TrainConfig,
                     num_classes: int) -> torch.Tensor:
    """(1 - w) x the target (labels one-hot with cfg.label_smoothing, or soft targets as they are) + w x
    softmax(teacher_logits / T): w = cfg.distill_weight, T = cfg.distill_temperature. Rows sum to 1."""
    if target.dim() == 1:
        target = soft_labels(target, num_classes, cfg.label_smoothing)
    soft = (teacher_logits / cfg.distill_temperature).softmax(1)
    return (1 - cfg.distill_weight) * target + cfg.distill_weight * soft


def _checkpoint_like(key: str, spec: str, pre: Preprocess, classes) -> dict:
    """The checkpoint a config key names (distill, init); it must see the run's input and answer its classes."""
    try:
        ckpt = load_checkpoint(spec)
    except FileNotFoundError as e:  # say which key named it: a packaged config may start from a run of another
        raise FileNotFoundError(f"{key}: {e}") from e
    if list(ckpt["classes"]) != list(classes) or Preprocess.from_dict(ckpt["preprocess"]) != pre:
        raise ValueError(f"{key}: {spec} answers {ckpt['classes']} from {ckpt['preprocess']}; this run learns "
                         f"{list(classes)} from {pre.to_dict()}: it must see the same input and answer the same "
                         "classes")
    return ckpt


def load_init(cfg: TrainConfig, model: torch.nn.Module, pre: Preprocess, classes) -> None:
    """Fine-tuning: cfg.init's weights (its EMA weights where it has them; fp16 ones as float32) into `model`,
    which must be the same network (model and model_args)."""
    ckpt = _checkpoint_like("init", cfg.init, pre, classes)
    if ckpt["model"] != cfg.model or dict(ckpt["model_args"]) != dict(cfg.model_args):
        raise ValueError(f"init: {cfg.init} is a {ckpt['model']!r} network with model_args {ckpt['model_args']}; "
                         f"this run trains {cfg.model!r} with {cfg.model_args}: fine-tuning starts from the same "
                         "network")
    source, _ = model_from_checkpoint(ckpt, calibrated=False)
    model.load_state_dict(source.state_dict())


def clean_view_targets(teacher: torch.nn.Module, images: torch.Tensor, labels: torch.Tensor,
                       targets: torch.Tensor | None, pre: Preprocess, cfg: TrainConfig, num_classes: int,
                       device: torch.device, cache: Path | None = None, write_cache: bool = True) -> torch.Tensor:
    """The training targets of `distill_views: clean`: `distilled_target` of each face's label (or soft target)
    and the teacher's flip-TTA probabilities on the face as stored, computed once. (N, classes), rows sum to 1.

    With `cache` (the run folder's TEACHER_PROBS), the probabilities are kept there with the digests of the
    teacher's file and of the faces, and read back by a later call on the same teacher and faces (a resumed run)
    instead of being computed again; `write_cache` False (the other ranks of a distributed run) only reads."""
    t0 = time.perf_counter()
    key = {"teacher_sha256": file_sha256(checkpoint_path(cfg.distill)),
           "faces_sha256": hashlib.sha256(images.contiguous().numpy().tobytes()).hexdigest(), "tta": "flip"}
    probs, how = None, "computed"
    if cache is not None and cache.exists():
        with suppress(Exception):  # an unreadable or foreign file is computed again, and replaced
            stored = torch.load(cache, map_location="cpu", weights_only=True)
            if stored["key"] == key and tuple(stored["probs"].shape) == (len(images), num_classes):
                probs, how = stored["probs"].float(), f"read from {cache}"
    if probs is None:
        probs = predict_probs_tta(teacher, images, pre, device, cfg.eval_batch_size, ("flip",), cfg.precision,
                                  cfg.channels_last)["flip"].float()
        if cache is not None and write_cache:
            with replacing(cache) as tmp:
                torch.save({"key": key, "probs": probs}, tmp)
    out = distilled_target(labels if targets is None else targets, probs.clamp_min(1e-12).log(), cfg, num_classes)
    print(f"teacher {cfg.distill}: soft targets for {len(labels)} training faces (flip TTA, un-augmented) "
          f"{how} in {time.perf_counter() - t0:.0f} s", flush=True)
    return out


def load_teacher(cfg: TrainConfig, pre: Preprocess, classes, device: torch.device) -> torch.nn.Module | None:
    """cfg.distill's network (calibrated, eval mode, frozen), or None; it must see what the student sees."""
    if not cfg.distill:
        return None
    teacher, _ = model_from_checkpoint(_checkpoint_like("distill", cfg.distill, pre, classes))
    teacher = teacher.to(device).eval()
    if cfg.channels_last:
        teacher = teacher.to(memory_format=torch.channels_last)
    for p in teacher.parameters():
        p.requires_grad_(False)
    return teacher


def evaluate(model, images: torch.Tensor, labels: torch.Tensor, pre: Preprocess, device: torch.device,
             batch_size: int = 256, tta: bool = False, precision: str = "fp32", dinfo: DistInfo | None = None,
             channels_last: bool = False) -> dict:
    """Loss and accuracy over a split (summed over ranks when distributed); probs of this rank's share."""
    dinfo = dinfo or DistInfo()
    sel = torch.arange(dinfo.rank, len(labels), dinfo.world)
    probs = predict_probs(model, images[sel], pre, device, batch_size, tta, precision, channels_last)
    y = labels[sel]
    nll = F.nll_loss(probs.clamp_min(1e-12).log(), y, reduction="sum").item()
    correct = (probs.argmax(1) == y).sum().item()
    nll, correct, n = dinfo.all_sum([nll, correct, float(len(y))], device)
    return {"loss": nll / max(n, 1), "accuracy": 100 * correct / max(n, 1), "probs": probs, "labels": y}


def selection_scores(model, corrupted: dict[str, torch.Tensor], labels: torch.Tensor, clean_accuracy: float,
                     pre: Preprocess, device: torch.device, cfg: TrainConfig, dinfo: DistInfo | None = None) -> dict:
    """The validation accuracy under each corruption (`val_<name>`), their mean (`val_corrupted_accuracy`) and
    the selection score `val_select` = (1 - cfg.select_weight) x clean_accuracy + cfg.select_weight x the mean."""
    out = {f"val_{name}": evaluate(model, x, labels, pre, device, cfg.eval_batch_size, False, cfg.precision, dinfo,
                                   cfg.channels_last)["accuracy"] for name, x in corrupted.items()}
    out["val_corrupted_accuracy"] = float(np.mean(list(out.values())))
    out["val_select"] = (1 - cfg.select_weight) * clean_accuracy + cfg.select_weight * out["val_corrupted_accuracy"]
    return out


# ----------------------------------------------------------------------------------------------- run

RUN_PLOTS = ("curves.png", "confusion_test.png")


def _new_run_dir(out_dir: str, name: str) -> Path:
    """runs/<name>, or runs/<name>-2, -3 ..., made here: the folder is claimed by mkdir, which only one process can
    win, so an existing run (even an empty folder) is never written into and runs started together with one name
    never share a folder."""
    base = Path(out_dir) / name
    base.parent.mkdir(parents=True, exist_ok=True)
    path, i = base, 2
    while True:
        try:
            path.mkdir()
            return path
        except FileExistsError:
            path, i = base.with_name(f"{name}-{i}"), i + 1


def _load_splits(cfg: TrainConfig):
    """{split: (uint8 faces, labels)} as cfg.labels trains and scores them, the training faces' soft targets (None
    where the labels are the targets), and for the FER+ modes a line saying which faces were left out."""
    data = load_fer2013(cfg.data)
    for line in data.missing_classes():
        print(line, file=sys.stderr, flush=True)
    splits = make_splits(data, cfg.split, seed=cfg.seed, fraction=cfg.fraction)
    labelled = relabel(splits, cfg.labels)
    note = None
    if cfg.labels != "fer2013":
        gone = {k: left_out(s.votes) for k, s in splits.items()}
        note = (f"labels {cfg.labels}: the FER+ majority, on every split; left out (no votes + unknown or NF "
                "majority): " + ", ".join(f"{k} {a}+{b} of {len(splits[k])}" for k, (a, b) in gone.items()))
    targets = train_targets(labelled["train"], cfg.labels, cfg.ferplus_blend, cfg.label_smoothing)
    return ({k: (torch.from_numpy(s.images), torch.from_numpy(s.labels)) for k, s in labelled.items()},
            None if targets is None else torch.from_numpy(targets), note)


def fit(cfg: TrainConfig | None, resume: str | Path | None = None, callbacks: list[Callback] | None = None,
        wandb_project: str | None = None, progress: bool = True, run_dir: str | Path | None = None,
        epoch_hook=None, resume_overrides: list[str] | None = None) -> dict:
    """Train a model per `cfg` into a run folder; returns the summary (also written to summary.json).

    With `resume` (a run folder), continue it from its last.pt with its own config; `cfg.data` (the data may
    have moved) and `resume_overrides` ("key=value" for config.RESUME_KEYS) are all that may change. A run
    whose summary.json exists is finished: its summary is returned and nothing is redone.
    epoch_hook(epoch, metrics) is called after every epoch on every rank (sweeps prune trials through it).
    """
    dinfo = DistInfo()
    resume_ckpt = None
    if resume is not None:
        resume = Path(resume)
        last = resume / "last.pt"
        if not last.exists():
            raise FileNotFoundError(f"cannot resume: {last} does not exist")
        resume_ckpt = load_checkpoint(last)
        data = [f"data={cfg.data}"] if cfg is not None and cfg.data else []
        saved = resume_config(resume_ckpt["config"], data + list(resume_overrides or []))
        done = resume / "summary.json"
        if resume_ckpt["epoch"] >= saved.epochs and done.exists():  # summary.json is written last
            missing = [p for p in RUN_PLOTS if not (resume / p).exists()]
            if dinfo.main:
                if missing:  # deleted, or a run killed between its summary and its plots by an older ferlab
                    _redraw_plots(resume, saved)
                print(f"{resume} finished all {saved.epochs} epochs already; "
                      + (f"drew its missing {', '.join(missing)}" if missing else "nothing to resume")
                      + f" (its results: {done})", flush=True)
            return json.loads(done.read_text())
        cfg, run_dir = saved, resume
        trained_world = resume_ckpt.get("world_size", 1)
        if trained_world != dinfo.world:
            raise ValueError(f"cannot resume {resume}: it was trained by {trained_world} process(es) (global batch "
                             f"{cfg.batch_size * trained_world}), now {dinfo.world}; a different world size changes "
                             f"the global batch and the schedule, so launch it with {trained_world} process(es)")

    device = resolve_device(cfg.device)
    own_group = dinfo.world > 1 and not dist.is_initialized()
    if own_group:
        backend = "nccl" if device.type == "cuda" else "gloo"
        if device.type == "cuda":
            device = torch.device("cuda", dinfo.local_rank)
            torch.cuda.set_device(device)
        dist.init_process_group(backend)
    try:
        return _fit(cfg, dinfo, device, resume_ckpt, run_dir, callbacks, wandb_project, progress, epoch_hook)
    except WriteError as e:  # disk full: the run's files are whole, and last.pt says where to go on from
        raise RuntimeError(_how_to_go_on(e, cfg.epochs)) from None
    finally:
        if own_group:  # also when fit raises here (an error, a pruned trial): not left to interpreter exit
            _leave_group(backend)


def _how_to_go_on(e: WriteError, epochs: int) -> str:
    """One line for a run file that could not be written (each lives in the run folder): what failed, what
    last.pt holds and the command that continues the run."""
    run = e.path.parent
    last, when = run / "last.pt", "once there is room" if e.full else "once it can be written"
    if not last.exists():
        return f"{e}; no epoch was saved, so there is nothing to resume: start the run again {when}"
    return (f"{e}; {last} holds epoch {load_checkpoint(last)['epoch']} of {epochs}, whole: {when}, continue "
            f"with: ferlab train --resume {run}")


def _leave_group(backend: str) -> None:
    """Tear the process group down together. Ranks that stop at the same point (the end, an epoch hook) first
    wait for each other: a rank destroying its gloo group while a peer still used it aborted that process
    ('terminate called without an active exception', 1 torchrun in 6 on a loaded 2-core machine). A peer
    that failed alone holds the others at most 30 s, and that wait's own failure is not the error reported.
    Objects of the run left in reference cycles (the DDP wrapper and its reducer's gloo work among them) are
    freed first, not at interpreter exit after the group is gone."""
    import gc
    gc.collect()
    if backend == "gloo":
        with suppress(Exception):
            dist.monitored_barrier(timeout=timedelta(seconds=30))
    dist.destroy_process_group()


def _fit(cfg: TrainConfig, dinfo: DistInfo, device: torch.device, resume_ckpt: dict | None, run_dir,
         callbacks, wandb_project, progress, epoch_hook) -> dict:
    if cfg.threads > 0:
        torch.set_num_threads(cfg.threads)
    torch.manual_seed(cfg.seed)
    asked = cfg  # what config.yaml and the checkpoints keep: a resume on a device with native bf16 uses it again
    precision = run_precision(device, cfg.precision)
    if precision != cfg.precision:
        cfg = dataclasses.replace(cfg, precision=precision)
        if dinfo.main:
            print(f"precision: the config asks for {asked.precision}, which {device} only emulates (no AVX512-BF16 "
                  f"or AMX; about 10x slower than fp32 on such a CPU): this sitting computes in {cfg.precision}",
                  flush=True)

    pre = build_preprocess(cfg)
    splits, ttr, note = _load_splits(cfg)
    (xtr, ytr), (xva, yva), (xte, yte) = splits["train"], splits["val"], splits["test"]
    classes = classes_for(cfg.labels)

    model = create_model(cfg.model, num_classes=len(classes), in_channels=pre.in_channels,
                         input_size=pre.input_size, **cfg.model_args)
    if cfg.init and resume_ckpt is None:
        load_init(cfg, model, pre, classes)
    model = model.to(device)
    if cfg.channels_last:
        model = model.to(memory_format=torch.channels_last)
    teacher = load_teacher(cfg, pre, classes, device)
    optimizer = make_optimizer(cfg, model)
    steps = len(ytr) // (cfg.batch_size * dinfo.world)
    if steps == 0:
        raise ValueError(f"train split has {len(ytr)} images, fewer than one global batch "
                         f"({cfg.batch_size} x {dinfo.world} processes)")
    scheduler = make_scheduler(cfg, optimizer, steps)
    ema = EMA(model, cfg.ema) if cfg.ema > 0 else None
    start, best = 1, -1.0
    if resume_ckpt is not None:
        model.load_state_dict(resume_ckpt["state_dict"])
        optimizer.load_state_dict(resume_ckpt["optimizer"])
        scheduler.load_state_dict(resume_ckpt["scheduler"])
        if ema is not None and resume_ckpt.get("ema_state_dict"):
            ema.module.load_state_dict(resume_ckpt["ema_state_dict"])
        if "rng_state" in resume_ckpt:
            torch.set_rng_state(resume_ckpt["rng_state"])
        start, best = resume_ckpt["epoch"] + 1, resume_ckpt["best_val_acc"]
        if not (Path(run_dir) / "best.pt").exists():  # last.pt carried alone to another machine: the first resumed
            best = -1.0                               # epoch writes best.pt, the later ones compete with it
    train_model = model
    if dinfo.world > 1:
        # BatchNorm stays per rank (no SyncBatchNorm): per-rank batches of 32+ give sound statistics, SyncBN
        # would add an all-reduce per BN layer and step and does not run on CPU/gloo. DDP broadcasts rank 0's
        # running statistics at every forward; the checkpoints are rank 0's.
        train_model = torch.nn.parallel.DistributedDataParallel(
            model, device_ids=[device.index] if device.type == "cuda" else None)

    if not run_dir:  # rank 0 picks the free name before anyone creates it; every rank must agree on it
        run_dir = dinfo.broadcast(_new_run_dir(cfg.out_dir, cfg.name) if dinfo.main else None)
    run_dir = Path(run_dir)
    cfg_dict = asked.to_dict()
    cbs: list[Callback] = []
    if dinfo.main:
        run_dir.mkdir(parents=True, exist_ok=True)
        with replacing(run_dir / "config.yaml") as tmp:
            tmp.write_text(yaml.safe_dump({**cfg_dict, "world_size": dinfo.world,
                                           "global_batch_size": cfg.batch_size * dinfo.world}, sort_keys=False))
        cbs = [CSVLogger(run_dir, start - 1), PrintLogger()]
        if wandb_project:
            cbs.append(WandbLogger(wandb_project, run_dir.name, cfg_dict, run_dir))
        cbs += callbacks or []
    if teacher is not None and cfg.distill_views == "clean":  # soft targets once, then train at the student's speed
        ttr = clean_view_targets(teacher, xtr, ytr, ttr, pre, cfg, len(classes), device, run_dir / TEACHER_PROBS,
                                 write_cache=dinfo.main)
        teacher = None
    n_params = count_params(model)
    origin = provenance(dinfo)
    if dinfo.main:
        print(f"run {run_dir}: {cfg.model} ({n_params:,} params) on {device}, input {pre.in_channels}x"
              f"{pre.input_size}x{pre.input_size}, train/val/test {len(ytr)}/{len(yva)}/{len(yte)}, "
              f"{dinfo.world} process(es) x batch {cfg.batch_size} = global batch {cfg.batch_size * dinfo.world}, "
              f"epochs {start}..{cfg.epochs}", flush=True)
        if note:
            print(note, flush=True)

    def ckpt_kwargs(epoch, metrics):
        return dict(model=model, model_name=cfg.model, model_args=cfg.model_args, pre=pre, config=cfg_dict,
                    epoch=epoch, best_val_acc=best, metrics=metrics,
                    ema_state=ema.module.state_dict() if ema else None, classes=classes)

    eval_model = ema.module if ema else model
    # the validation faces under the selection's corruptions, made once (each corruption draws from its own seed)
    corrupted_val = {c: torch.from_numpy(corrupt(c, xva.numpy())) for c in cfg.select_corruptions}
    trained_s = resume_ckpt.get("train_time_s", 0.0) if resume_ckpt is not None else 0.0  # before this process
    t_start = time.perf_counter()

    saved = start - 1  # the epoch last.pt holds

    def save_last(epoch, metrics):
        nonlocal saved
        save_checkpoint(run_dir / "last.pt", **ckpt_kwargs(epoch, metrics), optimizer=optimizer,
                        scheduler=scheduler, extra={"rng_state": torch.get_rng_state(), "world_size": dinfo.world,
                                                    "train_time_s": trained_s + time.perf_counter() - t_start})
        saved = epoch  # once written: a checkpoint the disk had no room for holds nothing

    if resume_ckpt is None and dinfo.main:
        save_last(0, {})  # epoch 0: a run killed in its first epoch resumes from its very start, not from nothing
    m, epoch = {}, start
    try:
        for epoch in range(start, cfg.epochs + 1):
            if dinfo.world > 1:  # dropout masks must differ between ranks; per epoch, so a resume draws the same
                torch.manual_seed(cfg.seed * 100_003 + epoch * 1_009 + dinfo.rank)
            tr = train_one_epoch(train_model, xtr, ytr, pre, optimizer, scheduler, cfg, epoch, device, ema, dinfo,
                                 progress and dinfo.main, ttr, teacher, len(classes))
            dinfo.sync_buffers(eval_model)  # each rank's last batch moved its own BN statistics: judge rank 0's model
            va = evaluate(eval_model, xva, yva, pre, device, cfg.eval_batch_size, False, cfg.precision, dinfo,
                          cfg.channels_last)
            m = {"epoch": epoch, "train_loss": tr["loss"], "train_accuracy": tr["accuracy"], "val_loss": va["loss"],
                 "val_accuracy": va["accuracy"], "train_val_acc_gap": tr["accuracy"] - va["accuracy"],
                 "lr": optimizer.param_groups[0]["lr"], "epoch_time_s": tr["time_s"],
                 "images_per_s": tr["images_per_s"]}
            score = va["accuracy"]
            if corrupted_val:
                m.update(selection_scores(eval_model, corrupted_val, yva, va["accuracy"], pre, device, cfg, dinfo))
                score = m["val_select"]
            improved = score > best
            best = max(best, score)
            if dinfo.main:
                for cb in cbs:
                    cb.on_epoch_end(epoch, m)
                if improved:  # model selection on the validation (PublicTest) split only
                    save_checkpoint(run_dir / "best.pt", **ckpt_kwargs(epoch, m))
                save_last(epoch, m)
            if epoch_hook is not None:
                epoch_hook(epoch, m)
    except KeyboardInterrupt:
        if dinfo.main:
            print(f"interrupted; {run_dir / 'last.pt'} holds epoch {saved} of {cfg.epochs}. Continue with: "
                  f"ferlab train --resume {run_dir}", file=sys.stderr, flush=True)
        raise

    summary = {}
    if dinfo.main:
        summary = finish_run(run_dir, cfg, pre, xte, yte, xva, yva, device, n_params,
                             wall_time_s=trained_s + time.perf_counter() - t_start, origin=origin)
        for cb in cbs:
            cb.on_train_end(summary)
    return dinfo.broadcast(summary)  # other ranks wait here while rank 0 tests best.pt


def finish_run(run_dir: Path, cfg: TrainConfig, pre, xte, yte, xva, yva, device, n_params, wall_time_s,
               origin: dict | None = None) -> dict:
    """Fit best.pt's temperature on the validation split, then evaluate it once on the test split; draw the plots,
    then write summary.json, last and whole: a run with a summary is finished (rank 0 alone, whole split)."""
    best = calibrate_checkpoint(load_checkpoint(run_dir / "best.pt"), xva, yva, device, "flip" if cfg.tta else "none",
                                cfg.eval_batch_size)
    write_checkpoint(run_dir / "best.pt", best)
    model, _ = model_from_checkpoint(best)
    model.to(device)
    alone = DistInfo(env={})  # the other ranks are not evaluating: no collectives here
    te = evaluate(model, xte, yte, pre, device, cfg.eval_batch_size, False, cfg.precision, alone)
    raw = evaluate(model.net, xte, yte, pre, device, cfg.eval_batch_size, False, cfg.precision, alone)
    rep = classification_report(te["probs"], yte, best["classes"])
    summary = {
        "name": run_dir.name, "model": cfg.model, "params": n_params,
        "input": f"{pre.in_channels}x{pre.input_size}x{pre.input_size}", "split": cfg.split,
        "labels": cfg.labels,  # fer2013: scored against FER2013's labels; ferplus*: against the FER+ majority
        # < 1: every split, val and test included, was shrunk to that share (a quick run, not a benchmark number)
        "fraction": cfg.fraction, "val_faces": len(yva), "test_faces": len(yte),
        "epochs": best["config"]["epochs"], "best_epoch": best["epoch"],
        # the seed's numbers: training-loop accuracy and validation at the chosen epoch, and their gap
        "train_accuracy": best["metrics"]["train_accuracy"], "val_accuracy": best["metrics"]["val_accuracy"],
        "gap": best["metrics"]["train_val_acc_gap"],
        "test_accuracy": te["accuracy"], "test_per_class_recall": rep["recall"],
        "test_macro_f1": rep["macro_f1"],
        # one temperature fitted on the validation split; ECE (15 bins) of the plain predictions on test
        "temperature": best["temperature"], "test_ece": expected_calibration_error(te["probs"], yte),
        "test_ece_uncalibrated": expected_calibration_error(raw["probs"], yte),
        # every epoch's, also those before a resume (metrics.csv keeps them)
        "wall_time_s": wall_time_s, "images_per_s": _mean_images_per_s(run_dir),
        "precision": cfg.precision, "device": str(device),
        **(origin or {}),  # hosts, world_size, torch, git_commit
    }
    if cfg.select_corruptions:  # chosen on clean and corrupted validation faces: the numbers it was chosen on
        summary["selection"] = {"corruptions": list(cfg.select_corruptions), "weight": cfg.select_weight,
                                **{k: best["metrics"][k] for k in ("val_corrupted_accuracy", "val_select")}}
    if cfg.tta:
        summary["val_accuracy_tta"] = evaluate(model, xva, yva, pre, device, cfg.eval_batch_size, True,
                                               cfg.precision, alone)["accuracy"]
        summary["test_accuracy_tta"] = evaluate(model, xte, yte, pre, device, cfg.eval_batch_size, True,
                                                cfg.precision, alone)["accuracy"]
    _draw_plots(run_dir, cfg, rep["confusion"], te["accuracy"], best["classes"])
    with replacing(run_dir / "summary.json") as tmp:  # last: a run with a summary is finished
        tmp.write_text(json.dumps(summary, indent=2))
    print(format_summary(summary, run_dir / "summary.json"), flush=True)
    return summary


def _mean_images_per_s(run_dir: Path) -> float | None:
    rates = read_metrics(run_dir / "metrics.csv").get("images_per_s", [])
    return float(np.mean(rates)) if rates else None


def _draw_plots(run_dir: Path, cfg: TrainConfig, confusion, test_accuracy: float, classes) -> None:
    """RUN_PLOTS: the training curves from metrics.csv and best.pt's confusion matrix on the test split."""
    plot_curves(run_dir / "metrics.csv", run_dir / "curves.png", f"{run_dir.name} ({cfg.model})")
    plot_confusion(confusion, classes, run_dir / "confusion_test.png",
                   f"{run_dir.name}: test accuracy {test_accuracy:.2f}%")


def _redraw_plots(run_dir: Path, cfg: TrainConfig) -> None:
    """The plots of a finished run, again: best.pt (calibrated as finish_run left it) on the test split."""
    if cfg.threads > 0:
        torch.set_num_threads(cfg.threads)
    device = resolve_device(cfg.device)
    xte, yte = _load_splits(cfg)[0]["test"]
    ckpt = load_checkpoint(run_dir / "best.pt")
    model, pre = model_from_checkpoint(ckpt)
    te = evaluate(model.to(device), xte, yte, pre, device, cfg.eval_batch_size, False, cfg.precision,
                  DistInfo(env={}))
    _draw_plots(run_dir, cfg, classification_report(te["probs"], yte, ckpt["classes"])["confusion"], te["accuracy"],
                ckpt["classes"])
