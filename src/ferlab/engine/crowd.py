"""How close a model's probabilities are to people's: FER+'s 10 crowd votes per face as the reference.

On the faces with at least one vote for one of the 7 emotions FER2013 and FER+ share, the crowd distribution is
the vote shares over those 7 (contempt, unknown and not-a-face votes left out, the rest renormalised). A model's
distribution is its probabilities over the same 7 (an 8-class FER+ model's contempt dropped and the rest
renormalised), so that FER2013 and FER+ models, and the uniform baseline, are measured on the same faces against
the same reference:

  KL     mean over faces of KL(crowd || model) = sum_k crowd_k log(crowd_k / model_k), in nats (0 log 0 = 0;
         a model probability is floored at 1e-12). Uniform scores log 7 - H(crowd).
  agree  accuracy of the model's top class against the crowd's majority over the 7 (a tie to the class FER+
         lists first, as `ferplus.majority`); none for the uniform model, which has no top class.
"""
from __future__ import annotations

import numpy as np

from ..data.classes import CLASSES
from ..data.ferplus import distribution, majority

FLOOR = 1e-12


def shared_probs(probs: np.ndarray) -> np.ndarray:
    """(N, 7) probabilities over FER2013's 7 classes from a 7-class model's or an 8-class FER+ model's (N, 7|8)
    (FER+'s first 7 classes are FER2013's, in the same order)."""
    probs = np.asarray(probs, np.float64)
    if probs.ndim != 2 or probs.shape[1] not in (len(CLASSES), len(CLASSES) + 1):
        raise ValueError(f"expected probabilities of shape (N, 7) or (N, 8), got {probs.shape}")
    p = probs[:, :len(CLASSES)]
    return p / p.sum(1, keepdims=True).clip(FLOOR)


def crowd_faces(votes: np.ndarray) -> np.ndarray:
    """Mask of the faces the comparison uses: a vote for at least one of the 7 shared emotions."""
    return majority(votes, shared=True) >= 0


def compare_with_crowd(probs: np.ndarray, votes: np.ndarray) -> dict:
    """Mean KL(crowd || model) and agreement with the crowd's majority over the 7 shared emotions, for a model's
    probabilities on faces with votes (rows of `probs` and `votes` aligned), and the same for the uniform model."""
    keep = crowd_faces(votes)
    if not keep.any():
        raise ValueError("no face here carries a FER+ vote for one of the 7 shared emotions; nothing to compare")
    crowd = distribution(votes[keep], len(CLASSES)).astype(np.float64)
    target = majority(votes[keep], shared=True)
    model = shared_probs(np.asarray(probs)[keep])
    return {"faces": int(keep.sum()), "model": _scores(crowd, model, target),
            "uniform": {**_scores(crowd, np.full_like(crowd, 1 / len(CLASSES)), target), "agree": None}}


def _scores(crowd: np.ndarray, model: np.ndarray, target: np.ndarray) -> dict:
    terms = np.where(crowd > 0, crowd * (np.log(crowd.clip(FLOOR)) - np.log(model.clip(FLOOR))), 0.0)
    return {"kl": float(terms.sum(1).mean()), "agree": float(100 * (model.argmax(1) == target).mean())}


def format_crowd(rows: dict[str, dict], faces: int) -> str:
    """A small table: one row per named result of `compare_with_crowd` (model rows, then uniform)."""
    lines = [f"compared with the FER+ crowd on {faces} faces (vote shares over the 7 shared emotions):",
             f"{'':<22}{'mean KL (nats)':>15}{'agrees with majority':>22}"]
    lines += [f"{name:<22}{r['kl']:>15.4f}" + (f"{r['agree']:>21.2f}%" if r["agree"] is not None else f"{'-':>22}")
              for name, r in rows.items()]
    return "\n".join(lines)
