"""Robustness: flip-TTA accuracy on FER2013's PrivateTest faces under fixed, seeded corruptions.

    python bench/robustness.py --data /path/to/fer2013 --models default [RUN ...] [--markdown FILE]
    python bench/robustness.py --data /path/to/fer2013 --models default runs/a+runs/b --limit 500

Each corruption (ferlab/data/corruptions.py) is applied to the 48x48 uint8 grey faces before the model's own
preprocessing; it is deterministic (a corruption that draws random numbers draws them from its own fixed seed)
and the same for every model. The faces are then scored as `ferlab eval` scores them: the checkpoint's network and
preprocessing (`model_from_checkpoint`, with its fitted temperature / logit adjustment), flip TTA
(`predict_probs_tta`), the split protocol of the first model's config, and `classification_report`'s
accuracy; on clean faces this is `ferlab eval MODEL --split test`'s flip-TTA accuracy.

Models: run folders, .pt files or 'default'; `A+B` is an ensemble of A and B (probabilities averaged, as
`ferlab eval A B`). Prints a Markdown table: one row per corruption, per model the accuracy (%) and the drop
from its clean accuracy (points; positive = worse). --markdown FILE also writes it; --limit N scores N faces
spread evenly over the split, for quick runs.

Note: a model with per-face standardisation (`standardize: true`, the shipped one) divides out each face's
mean and spread, so the linear brightness and contrast rows change little more than rounding for it; gamma
is not linear and is not undone.
"""
from __future__ import annotations

import argparse
import shlex
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import cv2
import numpy as np

from ferlab.data.corruptions import CORRUPTIONS, corrupt

if TYPE_CHECKING:
    import torch

# ------------------------------------------------------------------------------------------------ scoring

def _split_faces(specs: list[list[str]], split: str, data: str | None):
    """The checkpoints of each column and the split's faces and labels, chosen as `evaluate_checkpoints` does:
    FER2013 from --data (else the first model's config), split protocol and seed of the first model."""
    from ferlab.data import CLASSES, load_fer2013, make_splits
    from ferlab.engine.checkpoint import load_checkpoint

    # a member named in several columns is loaded (and scored) once
    loaded = {s: load_checkpoint(s) for s in dict.fromkeys(s for members in specs for s in members)}
    ckpts = [[loaded[s] for s in members] for members in specs]
    cfg = ckpts[0][0].get("config") or {}
    protocol = (cfg.get("split", "official"), cfg.get("seed", 42))
    for members, cs in zip(specs, ckpts):
        for s, c in zip(members, cs):
            if c["classes"] != list(CLASSES):
                raise SystemExit(f"{s}: classes {c['classes']} differ from FER2013's {list(CLASSES)}")
            ccfg = c.get("config") or {}
            theirs = (ccfg.get("split", "official"), ccfg.get("seed", 42))
            if theirs[0] != protocol[0] or (protocol[0] == "seed" and theirs != protocol):
                raise SystemExit(f"{s} was trained with split protocol {theirs}, the first model with {protocol}: "
                                 "their held-out faces differ, so one table cannot score them on the same faces")
    part = make_splits(load_fer2013(data or cfg.get("data")), protocol[0], seed=protocol[1])[split]
    return ckpts, part.images, part.labels, protocol[0]


def spread(faces: np.ndarray, labels: np.ndarray, limit: int | None) -> tuple[np.ndarray, np.ndarray]:
    """`limit` faces spread evenly over the split (it is stored class by class), or all of them."""
    if limit and limit < len(labels):
        idx = np.linspace(0, len(labels) - 1, limit).astype(int)
        return faces[idx], labels[idx]
    return faces, labels


def split_label(protocol: str, split: str) -> str:
    """What a table calls the split: FER2013's own name under the official protocol."""
    return {("official", "test"): "PrivateTest", ("official", "val"): "PublicTest"}.get(
        (protocol, split), f"{split} split")


def member_probs(ckpts: list[dict], faces: np.ndarray, names: list[str], device, batch_size: int = 256,
                 on_member: Callable[[int, str, torch.Tensor], None] | None = None,
                 known: Callable[[int, str], torch.Tensor | None] | None = None) -> Iterator[tuple[str, list]]:
    """Flip-TTA probabilities (N, classes) of each checkpoint on each corruption of `faces`: yields
    (corruption, [probabilities per checkpoint]) in the order of `names`, each network built once.
    `known(k, name)` may return probabilities already computed (a cache; the network is then not run), and
    `on_member(k, name, probs)` sees each one computed."""
    import torch

    from ferlab.engine.checkpoint import model_from_checkpoint
    from ferlab.engine.predict import predict_probs_tta

    models: dict[int, tuple] = {}
    for name in names:
        x = None
        row = []
        for k, c in enumerate(ckpts):
            probs = known(k, name) if known else None
            if probs is None:
                if k not in models:
                    model, pre = model_from_checkpoint(c)
                    models[k] = (model.to(device), pre)
                if x is None:
                    x = torch.from_numpy(corrupt(name, faces))
                model, pre = models[k]
                probs = predict_probs_tta(model, x, pre, device, batch_size, ("flip",))["flip"]
                if on_member:
                    on_member(k, name, probs)
            row.append(probs)
        yield name, row


def score(ckpts: list[list[dict]], faces: np.ndarray, labels: np.ndarray, names: list[str], device,
          batch_size: int = 256, on_row: Callable[[str, list[float]], None] | None = None) -> dict[str, list[float]]:
    """Flip-TTA accuracy (%) of each column (a list of checkpoints, probabilities averaged) on each corruption
    of `faces`: {name: [accuracy per column]}. `on_row(name, accuracies)` is called as each row is done."""
    import torch

    from ferlab.data import CLASSES
    from ferlab.engine.metrics import classification_report

    unique = list({id(c): c for cs in ckpts for c in cs}.values())  # columns that share a member run it once
    index = {id(c): k for k, c in enumerate(unique)}
    y = torch.from_numpy(np.asarray(labels, dtype=np.int64))
    out = {}
    for name, probs_of in member_probs(unique, faces, names, device, batch_size):
        row = []
        for cs in ckpts:
            probs = torch.zeros(len(y), len(CLASSES))
            for c in cs:
                probs += probs_of[index[id(c)]] / len(cs)
            row.append(classification_report(probs, y)["accuracy"])
        out[name] = row
        if on_row:
            on_row(name, row)
    return out


def write_markdown(path: str, text: str) -> None:
    """Write a bench's table to `path` whole or not at all, and say so."""
    from ferlab._atomic import replacing
    with replacing(path) as tmp:
        tmp.write_text(text)
    print(f"written to {path}")


def table_header(columns: list[str]) -> str:
    head = "| corruption | " + " | ".join(f"{c} | drop" for c in columns) + " |"
    return head + "\n|---|" + "---:|---:|" * len(columns)


def table_row(name: str, accs: list[float], clean_accs: list[float] | None) -> str:
    cells = []
    for k, acc in enumerate(accs):
        drop = "" if name == "clean" or clean_accs is None else f"{clean_accs[k] - acc:+.2f}"
        cells.append(f"{acc:.2f}% | {drop}")
    return f"| {CORRUPTIONS[name][0]} | " + " | ".join(cells) + " |"


def main(argv: list[str] | None = None) -> str:
    """Run the bench; returns what it printed (header and table)."""
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    ap.add_argument("--models", nargs="+", default=["default"], metavar="MODEL",
                    help="run folders, .pt files or 'default'; A+B = an ensemble (default: default)")
    ap.add_argument("--data", help="FER2013 (default: $FERLAB_DATA, else the first model's config)")
    ap.add_argument("--split", default="test", choices=["test", "val"],
                    help="test = PrivateTest (default), val = PublicTest (official protocol)")
    ap.add_argument("--limit", type=int, help="score only N faces, spread evenly over the split")
    ap.add_argument("--corruptions", default=",".join(CORRUPTIONS),
                    help=f"comma-separated subset, in table order (default: all: {','.join(CORRUPTIONS)})")
    ap.add_argument("--markdown", metavar="FILE", help="also write the header and table to FILE")
    ap.add_argument("--device", default="auto")
    ap.add_argument("--batch-size", type=int, default=256)
    ap.add_argument("--threads", type=int, default=1, help="torch and OpenCV threads (default: 1)")
    prog = sys.argv[0] if argv is None else "bench/robustness.py"
    argv = sys.argv[1:] if argv is None else list(argv)
    a = ap.parse_args(argv)
    if a.limit is not None and a.limit < 1:
        ap.error("--limit must be at least 1")
    names = [n.strip() for n in a.corruptions.split(",") if n.strip()]
    unknown = [n for n in names if n not in CORRUPTIONS]
    if unknown:
        ap.error(f"unknown corruption(s) {', '.join(unknown)}; known: {', '.join(CORRUPTIONS)}")
    if "clean" in names:  # first, so that every other row can say its drop
        names = ["clean"] + [n for n in names if n != "clean"]

    import torch

    import ferlab
    from ferlab.engine.predict import resolve_device
    torch.set_num_threads(a.threads)
    cv2.setNumThreads(a.threads)
    t0 = time.perf_counter()
    specs = [m.split("+") for m in a.models]
    ckpts, faces, labels, protocol = _split_faces(specs, a.split, a.data)
    total = len(labels)
    faces, labels = spread(faces, labels, a.limit)
    device = resolve_device(a.device)
    split_name = split_label(protocol, a.split)
    lines = [f"command: python {shlex.join([prog, *argv])}",
             (f"ferlab {ferlab.__version__} ({Path(ferlab.__file__).parent}), torch {torch.__version__}, "
              f"OpenCV {cv2.__version__}, device {device}, {a.threads} thread(s)"),
             (f"{split_name} ({protocol} protocol): {len(labels)} of {total} faces; flip TTA, as `ferlab eval`; "
              "accuracy %, drop = clean minus corrupted, points"),
             "", table_header(a.models)]
    print("\n".join(lines), flush=True)
    clean_accs: list[float] | None = None

    def on_row(name, accs):
        nonlocal clean_accs
        if name == "clean":
            clean_accs = accs
        lines.append(table_row(name, accs, clean_accs))
        print(lines[-1], flush=True)

    score(ckpts, faces, labels, names, device, a.batch_size, on_row)
    text = "\n".join(lines) + "\n"
    print(f"\n{time.perf_counter() - t0:.0f} s", flush=True)
    if a.markdown:
        write_markdown(a.markdown, text)
    return text


if __name__ == "__main__":
    main()
