"""The optional parts of ferlab and the extras that install them: `pip install 'ferlab[serve]'` and so on.

The core (data, configs, train, eval, calibrate, report, predict, explain) needs only the core dependencies.
Each heavier part imports its packages through `need`, so that a missing one stops with one line naming the
extra to install, instead of a traceback that ends in ModuleNotFoundError; `ferlab` prints that line and exits 2.
The extras themselves are declared in pyproject.toml ([project.optional-dependencies]); EXTRAS mirrors them
as import names, and a test checks the two agree with the built wheel's metadata.
"""
from __future__ import annotations

import importlib
from types import ModuleType

EXTRAS = {  # extra -> what it installs, by import name
    "serve": ("fastapi", "uvicorn", "python_multipart", "fastapi_offline", "wsproto"),
    "export": ("onnx", "onnxruntime"),
    "sweep": ("optuna", "psycopg"),
    "wandb": ("wandb",),
}


class MissingExtra(ImportError):
    """An optional package is not installed. The message is one line that names the extra installing it."""


def need(module: str, extra: str, what: str) -> ModuleType:
    """Import `module`, which the `extra` extra installs; `what` names the feature for the message
    ("ferlab serve", "an .onnx model")."""
    if module.split(".")[0] not in EXTRAS[extra]:
        raise ValueError(f"{module} is not part of the {extra!r} extra ({', '.join(EXTRAS[extra])})")
    try:
        return importlib.import_module(module)
    except ModuleNotFoundError as e:  # the package, or one it needs: installing the extra brings both
        raise MissingExtra(f"{what} needs the {extra!r} extra: pip install 'ferlab[{extra}]' "
                           f"({e.name or module} is not installed)", name=module) from e
