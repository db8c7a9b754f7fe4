"""Which models to ensemble: greedy forward selection on PublicTest, clean and corrupted.

    python bench/ensemble_select.py --data $FERLAB_DATA runs/a runs/b members/c.pt ... [--start default]
        [--budget-mb 24] [--exhaustive 10] [--cache ~/.cache/ferlab/select] [--markdown FILE]

Every candidate (a run folder, .pt file or 'default') is scored as bench/robustness.py scores it: flip TTA, its
own fitted temperature, on the PublicTest faces (`--split val`, the default; choices are made on PublicTest only)
clean and under the corruptions of ferlab's selection rule (noise std 10, blur sigma 1, JPEG q20, 50% down-up,
a patch over the eyes, rotation 30), each one fixed and seeded. An ensemble averages its members' probabilities,
as `ferlab eval A B` and the packaged `ensemble` do, and its score is

    score = w * clean accuracy + (1 - w) * mean accuracy over the corruptions      (w = --clean-weight, 0.5)

Starting from the --start members (none by default), the candidate whose addition raises the score most is added,
until none raises it, --max-members is reached or the next would take the members' fp16 weights past
--budget-mb. Greedy selection can stop short (a member may only pay next to one added later, or a first pick may
use the budget up): --exhaustive N scores every subset within those bounds as well, lists the best N and picks the
first. Prints each candidate alone, how alike their clean mistakes are (faces both get wrong over faces
either gets wrong), the selection step by step and the command that packages the pick. Each candidate's
probabilities are computed once per run; with --cache DIR they are kept there, keyed by the SHA-256 of the
checkpoint file, of the faces and the corruption's name, so a later run with one more candidate only runs that one.
"""
from __future__ import annotations

import argparse
import hashlib
import itertools
import shlex
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))  # bench/robustness.py, also when loaded by the tests
import robustness

RULE = ("noise10", "blur1", "jpeg20", "downup50", "eyes", "rot30")


def fp16_mb(ckpt: dict) -> float:
    """MiB the network's floating-point weights and buffers take in fp16, as the packaged ensemble stores them."""
    from ferlab.engine.checkpoint import answering_weights
    state = answering_weights(ckpt)
    return sum(2 * t.numel() for t in state.values() if t.is_floating_point()) / 2**20


def accuracy(probs: list[np.ndarray], members: list[int], labels: np.ndarray) -> float:
    mean = sum(probs[k] for k in members) / len(members)
    return 100.0 * float((mean.argmax(1) == labels).mean())


def evaluate(probs: dict[str, list[np.ndarray]], members: list[int], labels: np.ndarray, corrupted: list[str],
             clean_weight: float) -> tuple[float, float, float]:
    """(clean accuracy, mean corrupted accuracy, score) of the ensemble of `members`."""
    clean = accuracy(probs["clean"], members, labels)
    worse = float(np.mean([accuracy(probs[c], members, labels) for c in corrupted])) if corrupted else clean
    return clean, worse, clean_weight * clean + (1 - clean_weight) * worse


def greedy(probs: dict[str, list[np.ndarray]], labels: np.ndarray, corrupted: list[str], sizes: list[float],
           start: list[int], clean_weight: float = 0.5, max_members: int = 8,
           budget_mb: float | None = None) -> list[tuple[int | None, list[int], tuple[float, float, float]]]:
    """Forward selection: [(added, members, (clean, corrupted, score))], the first step being `start` (added None)
    when it is not empty. Stops when no candidate raises the score, at `max_members`, or when every candidate
    left would take the fp16 size past `budget_mb`."""
    members = list(start)
    steps: list = []
    best = evaluate(probs, members, labels, corrupted, clean_weight) if members else None
    if members:
        steps.append((None, list(members), best))
    while len(members) < max_members:
        trials = []
        for k in range(len(sizes)):
            if k in members or (budget_mb is not None and sum(sizes[m] for m in members) + sizes[k] > budget_mb):
                continue
            trials.append((evaluate(probs, members + [k], labels, corrupted, clean_weight), k))
        if not trials:
            break
        result, k = max(trials, key=lambda t: (t[0][2], t[0][0], -t[1]))  # score, then clean, then the first named
        if best is not None and result[2] <= best[2]:
            break
        members.append(k)
        best = result
        steps.append((k, list(members), result))
    return steps


def exhaustive(probs: dict[str, list[np.ndarray]], labels: np.ndarray, corrupted: list[str], sizes: list[float],
               start: list[int], clean_weight: float = 0.5, max_members: int = 8, budget_mb: float | None = None,
               top: int = 10) -> list[tuple[list[int], tuple[float, float, float]]]:
    """Every subset that holds the `start` members, has at most `max_members` and fits `budget_mb`, scored; the best
    `top` as [(members, (clean, corrupted, score))], by score, then clean accuracy, then fewer members. Greedy
    selection can stop short of these: a member that lowers the score alone may raise it next to a later one."""
    others = [k for k in range(len(sizes)) if k not in start]
    rows = []
    for r in range(max(0, 1 - len(start)), max_members - len(start) + 1):
        for extra in itertools.combinations(others, r):
            members = list(start) + list(extra)
            if budget_mb is not None and sum(sizes[m] for m in members) > budget_mb:
                continue
            rows.append((members, evaluate(probs, members, labels, corrupted, clean_weight)))
    rows.sort(key=lambda row: (-row[1][2], -row[1][0], len(row[0])))
    return rows[:top]


def _faces_key(faces: np.ndarray, labels: np.ndarray) -> str:
    h = hashlib.sha256(np.ascontiguousarray(faces).tobytes())
    h.update(np.ascontiguousarray(labels).tobytes())
    return h.hexdigest()[:16]


def main(argv: list[str] | None = None) -> str:
    """Run the selection; returns what it printed."""
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    ap.add_argument("models", nargs="+", metavar="MODEL", help="candidates: run folders, .pt files or 'default'")
    ap.add_argument("--start", nargs="*", default=[], metavar="MODEL",
                    help="members every ensemble keeps (candidates too; default: none)")
    ap.add_argument("--data", help="FER2013 (default: $FERLAB_DATA, else the first model's config)")
    ap.add_argument("--split", default="val", choices=["val", "test"],
                    help="val = PublicTest (default: what choices are made on); test = PrivateTest")
    ap.add_argument("--corruptions", default=",".join(RULE),
                    help=f"comma-separated; their mean is the corrupted accuracy (default: {','.join(RULE)})")
    ap.add_argument("--clean-weight", type=float, default=0.5, help="w in the score (default 0.5)")
    ap.add_argument("--max-members", type=int, default=8)
    ap.add_argument("--budget-mb", type=float, help="largest total fp16 size of the members, MiB (default: none)")
    ap.add_argument("--exhaustive", type=int, metavar="N",
                    help="also score every subset (within --max-members and --budget-mb) and list the best N; the "
                         "pick is then the best subset (at most 16 candidates)")
    ap.add_argument("--limit", type=int, help="score only N faces, spread evenly over the split, for quick runs")
    ap.add_argument("--cache", metavar="DIR", help="keep each candidate's probabilities here for later runs")
    ap.add_argument("--markdown", metavar="FILE", help="also write what is printed to FILE")
    ap.add_argument("--device", default="auto")
    ap.add_argument("--threads", type=int, default=1, help="torch and OpenCV threads (default: 1)")
    prog = sys.argv[0] if argv is None else "bench/ensemble_select.py"
    argv = sys.argv[1:] if argv is None else list(argv)
    a = ap.parse_args(argv)
    corrupted = [n.strip() for n in a.corruptions.split(",") if n.strip()]
    unknown = [n for n in corrupted if n not in robustness.CORRUPTIONS or n == "clean"]
    if unknown:
        ap.error(f"unknown corruption(s) {', '.join(unknown)}; known: "
                 f"{', '.join(n for n in robustness.CORRUPTIONS if n != 'clean')}")
    if not 0.0 <= a.clean_weight <= 1.0:
        ap.error("--clean-weight must be between 0 and 1")
    if a.max_members < 1 or (a.limit is not None and a.limit < 1) or (a.exhaustive is not None and a.exhaustive < 1):
        ap.error("--max-members, --limit and --exhaustive must be at least 1")
    names = list(dict.fromkeys(a.start + a.models))
    if a.exhaustive and len(names) > 16:
        ap.error(f"--exhaustive scores every subset: at most 16 candidates, got {len(names)}")

    import cv2
    import torch

    from ferlab.engine.checkpoint import checkpoint_path, file_sha256
    from ferlab.engine.predict import resolve_device
    torch.set_num_threads(a.threads)
    cv2.setNumThreads(a.threads)
    t0 = time.perf_counter()
    ckpts, faces, labels, protocol = robustness._split_faces([[n] for n in names], a.split, a.data)
    ckpts = [c[0] for c in ckpts]
    total = len(labels)
    faces, labels = robustness.spread(faces, labels, a.limit)
    labels = np.asarray(labels, dtype=np.int64)
    sizes = [fp16_mb(c) for c in ckpts]

    cache = Path(a.cache).expanduser() if a.cache else None
    shas = [file_sha256(checkpoint_path(n))[:16] for n in names] if cache else []
    fkey = _faces_key(faces, labels)

    def cached(k: int, corruption: str) -> Path:
        return cache / f"{shas[k]}-{fkey}-{corruption}.npy"

    def known(k, corruption):
        if cache and cached(k, corruption).exists():
            return torch.from_numpy(np.load(cached(k, corruption)))
        return None

    def keep(k, corruption, probs):
        if cache:
            cache.mkdir(parents=True, exist_ok=True)
            np.save(cached(k, corruption), probs.numpy())

    probs = {c: [p.numpy() for p in row] for c, row in robustness.member_probs(
        ckpts, faces, ["clean", *corrupted], resolve_device(a.device), on_member=keep, known=known)}

    split_name = robustness.split_label(protocol, a.split)
    w = a.clean_weight
    lines = [f"command: python {shlex.join([prog, *argv])}",
             (f"{split_name} ({protocol} protocol): {len(labels)} of {total} faces; flip TTA; accuracy %; "
              f"score = {w:g} x clean + {1 - w:g} x mean of {len(corrupted)} corrupted ({', '.join(corrupted)})"),
             "", "Each candidate alone:", "",
             "| model | fp16 MiB | clean | " + " | ".join(corrupted) + " | corrupted mean | score |",
             "|---|---:|---:|" + "---:|" * len(corrupted) + "---:|---:|"]
    for k, n in enumerate(names):
        clean, worse, s = evaluate(probs, [k], labels, corrupted, w)
        cells = " | ".join(f"{accuracy(probs[c], [k], labels):.2f}" for c in corrupted)
        lines.append(f"| {n} | {sizes[k]:.1f} | {clean:.2f} | {cells} | {worse:.2f} | {s:.2f} |")

    wrong = [probs["clean"][k].argmax(1) != labels for k in range(len(names))]
    lines += ["", "Clean mistakes in common (faces both get wrong / faces either gets wrong):", "",
              "| | " + " | ".join(str(k + 1) for k in range(len(names))) + " |",
              "|---|" + "---:|" * len(names)]
    for i, n in enumerate(names):
        cells = [f"{(wrong[i] & wrong[j]).sum() / max(1, (wrong[i] | wrong[j]).sum()):.2f}" for j in range(len(names))]
        lines.append(f"| {i + 1} {n} | " + " | ".join(cells) + " |")

    start = [names.index(n) for n in dict.fromkeys(a.start)]
    steps = greedy(probs, labels, corrupted, sizes, start, w, a.max_members, a.budget_mb)
    lines += ["", "Greedy forward selection:", "",
              "| step | added | members | fp16 MiB | clean | corrupted mean | score |", "|---:|---|---:|---:|---:|---:|---:|"]
    for i, (added, members, (clean, worse, s)) in enumerate(steps):
        lines.append(f"| {i} | {'(start)' if added is None else names[added]} | {len(members)} | "
                     f"{sum(sizes[m] for m in members):.1f} | {clean:.2f} | {worse:.2f} | {s:.2f} |")
    pick = [names[m] for m in steps[-1][1]] if steps else []
    if a.exhaustive:
        best = exhaustive(probs, labels, corrupted, sizes, start, w, a.max_members, a.budget_mb, a.exhaustive)
        lines += ["", f"Best {len(best)} of every subset:", "",
                  "| rank | members | fp16 MiB | clean | corrupted mean | score |", "|---:|---|---:|---:|---:|---:|"]
        for i, (members, (clean, worse, s)) in enumerate(best):
            lines.append(f"| {i + 1} | {' + '.join(names[m] for m in members)} | {sum(sizes[m] for m in members):.1f} "
                         f"| {clean:.2f} | {worse:.2f} | {s:.2f} |")
        pick = [names[m] for m in best[0][0]] if best else pick
    if pick:
        lines += ["", f"pick: {' + '.join(pick)}",
                  "package: python -m ferlab.weights --ensemble " + shlex.join(pick)]
    text = "\n".join(lines) + "\n"
    print(text, end="")
    print(f"\n{time.perf_counter() - t0:.0f} s", flush=True)
    if a.markdown:
        robustness.write_markdown(a.markdown, text)
    return text


if __name__ == "__main__":
    main()
