"""The configs that ship inside the package: one YAML per experiment, found by name from any folder.

`ferlab train vgg_s_cpu48` and `ferlab sweep seed_regularisation` read them from here. A path that exists is
always taken first, so a config file of your own is never shadowed by a packaged one of the same name; only
when no such file exists is the argument looked up as a packaged name (with or without `.yaml`, subfolders
with a slash: `seed/iter5_enhanced_cnn_v2`). Training configs are every YAML here outside `sweeps/`;
sweep specs are the ones in `sweeps/`, named without that folder. `ferlab configs` lists both.
"""
from __future__ import annotations

import difflib
from pathlib import Path

CONFIG_DIR = Path(__file__).resolve().parent
KINDS = ("config", "sweep")
_SWEEPS = "sweeps"


def _root(kind: str) -> Path:
    if kind not in KINDS:
        raise ValueError(f"kind {kind!r} is not one of {', '.join(KINDS)}")
    return CONFIG_DIR / _SWEEPS if kind == "sweep" else CONFIG_DIR


def names(kind: str = "config") -> list[str]:
    """Packaged names of one kind, sorted: 'vgg_s_cpu48', 'seed/iter1_simple_cnn', ... or the sweeps'."""
    root = _root(kind)
    found = (p.relative_to(root).with_suffix("").as_posix() for p in root.rglob("*.yaml"))
    return sorted(n for n in found if kind == "sweep" or n.split("/")[0] != _SWEEPS)


def packaged(name: str, kind: str = "config") -> Path | None:
    """The packaged file called `name` (".yaml" optional), or None."""
    stem = name[:-5] if name.endswith(".yaml") else name[:-4] if name.endswith(".yml") else name
    return _root(kind) / f"{stem}.yaml" if stem in names(kind) else None


def resolve(arg: str | Path, kind: str = "config") -> Path:
    """A config argument as a file: an existing path first, else a packaged name; otherwise a one-line error
    that suggests the closest name and lists them all."""
    path = Path(arg)
    if path.is_file():
        return path
    found = packaged(str(arg), kind)
    if found is None:
        raise not_found(arg, kind)
    return found


def not_found(arg: str | Path, kind: str = "config") -> FileNotFoundError:
    """The error for an argument that is no file and no packaged name: the closest name, then all of them."""
    valid = names(kind)
    stem = Path(arg).as_posix().removesuffix(".yaml").removesuffix(".yml")
    # a part of one name ('seed_reg'), then whole names and their last part, so that 'iter5_enhanced_cnn_v2'
    # finds 'seed/iter5_enhanced_cnn_v2'
    by_last = {n.rsplit("/", 1)[-1]: n for n in valid}
    close = ([n for n in valid if stem in n][:1] or difflib.get_close_matches(stem, valid, n=1) or
             [by_last[m] for m in difflib.get_close_matches(stem.rsplit("/", 1)[-1], by_last, n=1)])
    hint = f"; did you mean {close[0]!r}?" if close else "."
    verb = "ferlab sweep" if kind == "sweep" else "ferlab train"
    return FileNotFoundError(f"{kind} {str(arg)!r} is neither a file nor a packaged {kind} name{hint} Packaged "
                             f"{kind}s ({verb} NAME): {', '.join(valid)}")


def describe(path: Path) -> str:
    """The first comment line of a config file: what it is for."""
    for line in path.read_text().splitlines():
        if line.startswith("#"):
            return line.lstrip("# ").strip()
        if line.strip():
            break
    return ""
