"""Packaging runs as the models ferlab ships (`python -m ferlab.weights`): one calibrated run as `default.pt`,
several as `ensemble.pt`. Where those files live, and how `--model` names them, is `ferlab.weights`."""
from __future__ import annotations

from pathlib import Path

import torch

from ..data import load_fer2013, make_splits
from ..data.ferplus import FERPLUS_CLASSES, relabel
from ..inference.preprocess import Preprocess
from ..models import create_model
from ..weights import DEFAULT_WEIGHTS, ENSEMBLE_WEIGHTS
from .calibration import calibrate_checkpoint
from .checkpoint import FORMAT_VERSION, answering_weights, load_checkpoint, model_from_checkpoint, write_checkpoint
from .config import config_from_saved
from .predict import resolve_device


def package_model(run: str | Path, out: str | Path = DEFAULT_WEIGHTS, classes: int | None = None,
                  half: bool = False) -> Path:
    """Write a run's best checkpoint as a shippable model: weights, metadata and the temperature fitted on
    the validation split (`ferlab calibrate`); no optimizer state. With `classes`, the run must predict that
    many (7: the FER2013 default; 8: the FER+ model). With `half`, the weights are stored in fp16 (half the
    file; they load into the float32 network). `run` may be a packaged model: it keeps its `source_run`."""
    ckpt = load_checkpoint(run)
    if classes is not None and len(ckpt["classes"]) != classes:
        raise ValueError(f"{run} predicts {len(ckpt['classes'])} classes ({', '.join(ckpt['classes'])}); this model "
                         f"must predict {classes}")
    if not ckpt.get("temperature"):
        raise ValueError(f"{run}: no temperature fitted; run `ferlab calibrate {run}` first, so the shipped "
                         "model's probabilities are calibrated")
    # preprocessing and config in their current form (a run from an older ferlab may carry removed keys); one set
    # of weights, those the model answers with: its EMA weights where the run kept them
    # a model packaged before (repacked in fp16, say) keeps the run it came from
    ckpt = {**ckpt, "optimizer": None, "scheduler": None, "source_run": ckpt.get("source_run") or str(run),
            "state_dict": answering_weights(ckpt), "ema_state_dict": None,
            "preprocess": Preprocess.from_dict(ckpt["preprocess"]).to_dict(),
            "config": config_from_saved(ckpt["config"]).to_dict()}
    if half:
        ckpt["state_dict"] = {k: v.half() if v.is_floating_point() else v for k, v in ckpt["state_dict"].items()}
    return write_checkpoint(out, ckpt)


def package_ensemble(runs: list[str | Path], out: str | Path = ENSEMBLE_WEIGHTS, data: str | None = None,
                     device: str = "auto", classes: int | None = None) -> tuple[Path, dict]:
    """Write calibrated runs as one shippable ensemble (ferlab.models.ensemble): each member keeps its own
    temperature and logit bias, and one more temperature, for the ensemble as a whole, is fitted on the
    validation split (PublicTest) under flip TTA, as the Predictor predicts (FER+ models: on its faces with a
    FER+ majority, against it, as `ferlab eval` scores them). Weights are stored in fp16
    (halving the file; the float32 network they load into gives the same labels: see the README). With
    `classes`, the runs must predict that many (7: FER2013's; 8: FER+'s). Each member is recorded by the run it
    came from: a packaged model's or an unpacked member's `source_run`, else the path given. Returns the file and
    the calibration record."""
    if len(runs) < 2:
        raise ValueError(f"an ensemble needs at least two runs, got {len(runs)}")
    ckpts = [load_checkpoint(r) for r in runs]
    first = ckpts[0]
    for run, c in zip(runs, ckpts):
        if classes is not None and len(c["classes"]) != classes:
            raise ValueError(f"{run} predicts {len(c['classes'])} classes ({', '.join(c['classes'])}); this "
                             f"ensemble's members must predict {classes}")
        if not c.get("temperature"):
            raise ValueError(f"{run}: no temperature fitted; run `ferlab calibrate {run}` first")
        if c["classes"] != first["classes"] or Preprocess.from_dict(c["preprocess"]) != Preprocess.from_dict(
                first["preprocess"]):
            raise ValueError(f"{run}: its classes or preprocessing differ from {runs[0]}'s; an ensemble's members "
                             "see the same input and answer the same classes")
    members = [{"model": c["model"], "model_args": c["model_args"]} for c in ckpts]
    pre = Preprocess.from_dict(first["preprocess"])
    net = create_model("ensemble", num_classes=len(first["classes"]), in_channels=pre.in_channels,
                       input_size=pre.input_size, members=members)
    for i, c in enumerate(ckpts):
        member, _ = model_from_checkpoint(c, calibrated=False)  # its EMA weights where it has them
        net.members[i].load_state_dict(member.state_dict())
        net.temperatures[i] = float(c["temperature"])
        if c.get("logit_bias") is not None:
            net.biases[i] = torch.as_tensor(c["logit_bias"], dtype=torch.float32)
    ckpt = {"format": "ferlab", "format_version": FORMAT_VERSION, "model": "ensemble", "model_args": {"members": members},
            "preprocess": pre.to_dict(), "classes": list(first["classes"]), "state_dict": net.state_dict(),
            "members": [str(c.get("source_run") or r) for r, c in zip(runs, ckpts)],
            "config": {"split": "official", "data": first["config"].get("data")},
            "epoch": None, "best_val_acc": None, "metrics": {}}
    cfg = first.get("config") or {}
    val = make_splits(load_fer2013(data or cfg.get("data")), cfg.get("split", "official"),
                      seed=cfg.get("seed", 42))["val"]
    if list(first["classes"]) == list(FERPLUS_CLASSES):  # the faces with a FER+ majority, labelled with it
        val = relabel({"val": val}, "ferplus")["val"]
    ckpt = calibrate_checkpoint(ckpt, torch.from_numpy(val.images), torch.from_numpy(val.labels),
                                resolve_device(device), "flip")
    ckpt["state_dict"] = {k: v.half() if v.is_floating_point() else v for k, v in ckpt["state_dict"].items()}
    return write_checkpoint(out, ckpt), ckpt["calibration"]


def unpack_ensemble(spec: str | Path, out_dir: str | Path) -> list[Path]:
    """Write each member of a packaged ensemble (`ensemble`, or its .pt file) as a checkpoint of its own in
    `out_dir`, named after the run it came from (`teacher_vgg_s_ema.pt`; `member_2.pt` where the ensemble does
    not say; a file of that name already there stops it before it writes anything): its network, its weights in float32 (the fp16 values, exactly), its own temperature and logit bias,
    and the ensemble's preprocessing and classes. Such a file is what `ferlab eval`, `predict` or
    `package_ensemble` take, so a new ensemble can be built from a shipped one's members without their runs."""
    ckpt = load_checkpoint(spec)
    if ckpt["model"] != "ensemble":
        raise ValueError(f"{spec}: a {ckpt['model']!r} model, not an ensemble; nothing to unpack")
    members = ckpt["model_args"]["members"]
    sources = ckpt.get("members") or [None] * len(members)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    names = [Path(str(s)).name if s else f"member_{i}" for i, s in enumerate(sources)]
    if len(set(names)) != len(names):  # two members from runs of the same name: number them all
        names = [f"member_{i}_{n}" for i, n in enumerate(names)]
    there = [str(out_dir / f"{n}.pt") for n in names if (out_dir / f"{n}.pt").exists()]
    if there:  # never overwrite a file one already has
        raise ValueError(f"{', '.join(there)} already exist(s); unpack into another folder or move them first")
    state = ckpt["state_dict"]
    written = []
    for i, (member, name) in enumerate(zip(members, names)):
        prefix = f"members.{i}."
        bias = state["biases"][i].float()
        one = {"format": "ferlab", "format_version": FORMAT_VERSION, "model": member["model"],
               "model_args": dict(member.get("model_args", {})), "preprocess": ckpt["preprocess"],
               "classes": list(ckpt["classes"]),
               "state_dict": {k[len(prefix):]: v.float() if v.is_floating_point() else v
                              for k, v in state.items() if k.startswith(prefix)},
               "temperature": float(state["temperatures"][i]),
               "logit_bias": bias.tolist() if bool(bias.any()) else None,
               "config": dict(ckpt.get("config") or {}), "source_run": sources[i], "unpacked_from": str(spec),
               "epoch": None, "best_val_acc": None, "metrics": {}}
        written.append(write_checkpoint(out_dir / f"{name}.pt", one))
    return written
