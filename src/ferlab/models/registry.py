"""One registry: model name -> factory. CLI, configs, reports and tests all go through `create_model`."""
from __future__ import annotations

import difflib
from typing import Callable

import torch.nn as nn

_REGISTRY: dict[str, Callable[..., nn.Module]] = {}
_DEFAULTS: dict[str, dict] = {}


def register(name: str, **defaults):
    """Decorator: register a factory under `name`, with its default preprocessing (size, channels, mean/std)."""
    def deco(fn):
        if name in _REGISTRY:
            raise ValueError(f"model {name!r} registered twice")
        _REGISTRY[name] = fn
        _DEFAULTS[name] = defaults
        return fn
    return deco


def list_models() -> list[str]:
    return sorted(_REGISTRY)


def model_defaults(name: str) -> dict:
    _check(name)
    return dict(_DEFAULTS[name])


def _check(name: str) -> None:
    if name not in _REGISTRY:
        close = difflib.get_close_matches(name, _REGISTRY, n=1)
        hint = f" Did you mean {close[0]!r}?" if close else ""
        raise ValueError(f"unknown model {name!r}.{hint} Registered: {', '.join(list_models())}")


def create_model(name: str, num_classes: int = 7, in_channels: int = 1, input_size: int = 48, **kwargs) -> nn.Module:
    """Build a registered model for inputs of shape (B, in_channels, input_size, input_size)."""
    _check(name)
    return _REGISTRY[name](num_classes=num_classes, in_channels=in_channels, input_size=input_size, **kwargs)


def count_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())
