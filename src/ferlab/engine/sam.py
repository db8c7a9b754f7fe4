"""Sharpness-aware minimisation (Foret et al., ICLR 2021): descend with the gradient taken at the worst nearby point.

FER2013's labels are noisy (FER+ relabelled it with ten annotators per face), and flat minima are reported to
generalise better and to resist label noise. The cost is a second forward and backward pass per step.
"""
from __future__ import annotations

import contextlib
from typing import Callable

import torch
from torch import nn


@contextlib.contextmanager
def running_stats_frozen(model: nn.Module):
    """BatchNorm still normalises by the batch (training mode) but leaves its running statistics alone, so a
    second pass over the same batch does not count it twice."""
    norms = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    saved = [(m.momentum, m.num_batches_tracked.clone() if m.num_batches_tracked is not None else None)
             for m in norms]
    for m in norms:
        m.momentum = 0.0  # running = (1 - 0) * running + 0 * batch
    try:
        yield
    finally:
        for m, (momentum, tracked) in zip(norms, saved):
            m.momentum = momentum
            if tracked is not None:
                m.num_batches_tracked.copy_(tracked)


def sharpness_aware_grads(model: nn.Module, loss_fn: Callable[[], torch.Tensor], rho: float) -> torch.Tensor:
    """Replace the gradients in `.grad` (the loss's at the weights w, already back-propagated) by the gradients of
    `loss_fn()` at w + rho * g / ||g||, the point of the rho-ball around w where the loss rises fastest to first
    order. The weights are w again on return, so the optimizer's step (and its weight decay) starts from w.
    Returns the loss at the perturbed point."""
    if rho <= 0:
        raise ValueError(f"sam_rho must be > 0 to take a sharpness-aware step, got {rho}")
    params = [p for p in model.parameters() if p.grad is not None]
    if not params:
        raise RuntimeError("sharpness_aware_grads needs the gradients of the loss at w: call loss.backward() first")
    with torch.no_grad():
        norm = torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(p.grad.float()) for p in params]))
        scale = rho / (norm + 1e-12)
        kept = [p.detach().clone() for p in params]  # restored exactly: w + e - e is not always w in floats
        for p in params:
            p.add_(p.grad * scale.to(p.grad.dtype))
    for p in params:
        p.grad = None
    try:
        with running_stats_frozen(model):
            loss = loss_fn()
        loss.backward()
    finally:
        with torch.no_grad():
            for p, w in zip(params, kept):
                p.copy_(w)
    return loss
