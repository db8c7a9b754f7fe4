"""bench/ensemble_select.py: greedy forward selection adds what raises the score and stops when nothing does or the
size budget is spent; end to end on real faces its numbers are bench/robustness.py's, and its cache spares the
networks a second run."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from conftest import load_bench
from test_robustness import small_checkpoint

from ferlab.engine import predict

es = load_bench("ensemble_select")
rb = es.robustness


def probs_of(labels: np.ndarray, wrong: range, right_conf: float, wrong_conf: float) -> np.ndarray:
    """A member's probabilities: the true class at `right_conf`, except on the faces `wrong`, where the next class
    gets `wrong_conf`; the rest shared evenly."""
    pred, conf = labels.copy(), np.full(len(labels), right_conf)
    pred[list(wrong)] = (pred[list(wrong)] + 1) % 7
    conf[list(wrong)] = wrong_conf
    p = np.repeat(((1 - conf) / 6)[:, None], 7, axis=1)
    p[np.arange(len(labels)), pred] = conf
    return p


def test_greedy_adds_what_raises_the_score_and_stops():
    labels = np.arange(10) % 7
    a = probs_of(labels, range(3), 0.6, 0.6)  # 70%, sure of its mistakes
    b = probs_of(labels, range(3, 5), 0.9, 0.4)  # 80%, unsure of its mistakes: A puts them right
    c = a.copy()  # A's twin: adds nothing A has not
    d = probs_of(labels, range(9), 0.6, 0.6)  # 10%
    probs = {"clean": [a, b, c, d]}
    sizes = [3.0, 3.0, 3.0, 8.0]
    steps = es.greedy(probs, labels, [], sizes, start=[])
    # B alone first; then A (C ties it: the first named wins); A's twin would undo B's gain on faces 0-2: stop
    assert [(k, m, r[0]) for k, m, r in steps] == [(1, [1], 80.0), (0, [1, 0], 100.0)]
    # the budget keeps a second 3 MiB member out of 5 MiB
    assert [m for _, m, _ in es.greedy(probs, labels, [], sizes, start=[], budget_mb=5.0)] == [[1]]
    # start members are kept and reported as step 0 (added None)
    forced = es.greedy(probs, labels, [], sizes, start=[3], max_members=2)
    assert [(k, m, r[0]) for k, m, r in forced] == [(None, [3], 10.0), (1, [3, 1], 80.0)]


def test_exhaustive_finds_the_pair_greedy_selection_misses():
    labels = np.arange(10) % 7
    z = probs_of(labels, range(8, 10), 0.6, 0.6)  # 80% alone, the best single member
    x = probs_of(labels, range(0, 4), 0.9, 0.4)  # 60%, unsure of its mistakes
    y = probs_of(labels, range(4, 8), 0.9, 0.4)  # 60%, unsure of other mistakes: each puts the other's right
    probs, sizes = {"clean": [z, x, y]}, [3.0, 2.0, 2.0]
    # greedy takes Z, and the 4 MiB budget then leaves no room for a second member
    assert [m for _, m, _ in es.greedy(probs, labels, [], sizes, start=[], budget_mb=4.0)] == [[0]]
    best = es.exhaustive(probs, labels, [], sizes, start=[], budget_mb=4.0, top=3)
    assert [(m, r[0]) for m, r in best] == [([1, 2], 100.0), ([0], 80.0), ([1], 60.0)]
    # start members are in every subset (X with Z is 100% too); max_members bounds the subsets
    assert [(m, r[0]) for m, r in es.exhaustive(probs, labels, [], sizes, start=[1], max_members=2)] == [
        ([1, 0], 100.0), ([1, 2], 100.0), ([1], 60.0)]
    assert all(len(m) == 1 for m, _ in es.exhaustive(probs, labels, [], sizes, start=[], max_members=1))


def test_score_weighs_clean_against_the_corrupted_mean():
    labels = np.zeros(4, dtype=np.int64)
    good, bad = probs_of(labels, range(0), 0.6, 0.6), probs_of(labels, range(1), 0.6, 0.6)
    probs = {"clean": [good], "noise10": [bad], "blur1": [good]}
    clean, worse, score = es.evaluate(probs, [0], labels, ["noise10", "blur1"], clean_weight=0.25)
    assert (clean, worse) == (100.0, 87.5) and score == pytest.approx(0.25 * 100 + 0.75 * 87.5)


@pytest.fixture(scope="module")
def tinies(fer_slice, tmp_path_factory):
    folder = tmp_path_factory.mktemp("select")
    return [small_checkpoint(folder / f"tiny{s}.pt", fer_slice, seed=s) for s in range(3)]


def test_main_agrees_with_robustness_and_reuses_its_cache(tinies, fer_folder, tmp_path, monkeypatch, capsys):
    cache = tmp_path / "cache"
    args = ["--data", str(fer_folder), *map(str, tinies), "--corruptions", "noise10,eyes", "--cache", str(cache),
            "--split", "test"]
    text = es.main(args)
    assert "PrivateTest (official protocol): 168 of 168 faces" in text
    # each candidate's clean accuracy alone is robustness.py's (= `ferlab eval`'s flip-TTA accuracy)
    ckpts, faces, labels, _ = rb._split_faces([[str(t)] for t in tinies], "test", str(fer_folder))
    want = rb.score(ckpts, faces, labels, ["clean", "noise10", "eyes"], torch.device("cpu"))
    rows = {line.split(" | ")[0][2:]: line.split(" | ") for line in text.splitlines() if line.startswith("| /")}
    for k, t in enumerate(tinies):
        row = rows[str(t)]
        assert float(row[2]) == pytest.approx(want["clean"][k], abs=0.006)
        assert float(row[3]) == pytest.approx(want["noise10"][k], abs=0.006)
        assert float(row[5]) == pytest.approx((want["noise10"][k] + want["eyes"][k]) / 2, abs=0.006)
    # the pick's score is that ensemble's, scored by robustness.py
    pick = text.split("pick: ")[1].splitlines()[0].split(" + ")
    steps = [line for line in text.splitlines() if line.startswith("| ") and line.split(" | ")[0][2:].isdigit()]
    last = steps[-1].rstrip(" |").split(" | ")
    ens = rb.score([[ckpts[[str(t) for t in tinies].index(p)][0] for p in pick]], faces, labels,
                   ["clean", "noise10", "eyes"], torch.device("cpu"))
    assert float(last[4]) == pytest.approx(ens["clean"][0], abs=0.006)
    assert float(last[6]) == pytest.approx((ens["clean"][0] + (ens["noise10"][0] + ens["eyes"][0]) / 2) / 2, abs=0.006)
    assert len(list(cache.glob("*.npy"))) == 3 * 3
    # a second run reads every probability back: no network runs, the same tables
    calls = []
    run = predict.predict_probs_tta
    monkeypatch.setattr(predict, "predict_probs_tta", lambda *a, **k: calls.append(1) or run(*a, **k))
    capsys.readouterr()
    assert es.main(args) == text and not calls
    # --exhaustive ranks all 7 subsets from the cache; its first is the pick, at least as good as greedy's
    full = es.main([*args, "--exhaustive", "7"])
    table = full.split("of every subset:")[1].splitlines()
    ranked = [line.rstrip(" |").split(" | ") for line in table if line[:4] in {f"| {i} " for i in range(1, 8)}]
    scores = [float(r[5]) for r in ranked]
    assert len(ranked) == 7 and not calls
    assert scores[0] >= float(last[6]) and scores == sorted(scores, reverse=True)
    assert full.split("pick: ")[1].splitlines()[0] == ranked[0][1]


def test_bad_arguments_are_one_line_errors(tinies, fer_folder, capsys):
    for bad, said in ((["--corruptions", "fog"], "unknown corruption(s) fog"),
                      (["--clean-weight", "1.5"], "--clean-weight must be between 0 and 1"),
                      (["--exhaustive", "0"], "--exhaustive must be at least 1")):
        with pytest.raises(SystemExit) as e:
            es.main(["--data", str(fer_folder), str(tinies[0]), *bad])
        assert e.value.code == 2 and said in capsys.readouterr().err
