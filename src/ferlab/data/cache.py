"""Loading FER2013: decode once, then load in about a second from a uint8 array cache keyed by the source's
fingerprint; FER+ votes are attached after reading (they are never cached)."""
from __future__ import annotations

import hashlib
import json
import os
import warnings
from pathlib import Path

import numpy as np

from .ferplus import attach_votes
from .readers import DataError, FerData, decode_fer2013, folder_files

CACHE_VERSION = 1
DATA_ENV = "FERLAB_DATA"
CACHE_ENV = "FERLAB_CACHE"
KEEP = 4  # cache files kept (about 45 MB each for the full FER2013), most recently used first


def cache_dir() -> Path:
    return Path(os.environ.get(CACHE_ENV, Path.home() / ".cache" / "ferlab"))


def fingerprint(path: Path) -> str:
    """Hash of path, sizes and modification times: a changed source gets a new cache entry."""
    h = hashlib.sha1(f"v{CACHE_VERSION}:{path.resolve()}".encode())
    files = sorted(path / n for n in folder_files(path)) if path.is_dir() else [path]  # the files the reader reads
    for p in files:
        st = p.stat()
        h.update(f"{p.relative_to(path) if path.is_dir() else p.name}:{st.st_size}:{st.st_mtime_ns};".encode())
    return h.hexdigest()[:20]


def read_fer2013(path: str | os.PathLike, skip_bad: bool = False) -> FerData:
    """Decode FER2013 from a folder, archive or CSV file, with its FER+ votes (no cache; see `load_fer2013`)."""
    path = Path(path).expanduser()
    return attach_votes(decode_fer2013(path, skip_bad), path)


def resolve_data_path(path: str | os.PathLike | None) -> Path:
    """The --data argument, else $FERLAB_DATA, else a clear error."""
    if path is None:
        path = os.environ.get(DATA_ENV)
    if not path:
        raise DataError(f"no FER2013 location given: pass --data PATH or set {DATA_ENV} to your Kaggle download "
                        "(folder, .zip/.tar.gz, fer2013.csv, icml_face_data.csv or train.csv)")
    return Path(path).expanduser()


def load_fer2013(path: str | os.PathLike | None = None, skip_bad: bool = False, cache: bool = True) -> FerData:
    """Load FER2013 from any supported form, through the array cache."""
    path = resolve_data_path(path)
    if not path.exists():
        return read_fer2013(path)  # raises the helpful not-found error
    if not cache:
        return read_fer2013(path, skip_bad)
    key = fingerprint(path) + ("-skipbad" if skip_bad else "")
    file = cache_dir() / f"fer2013-{key}.npz"
    if file.exists():
        try:
            with np.load(file, allow_pickle=False) as z:
                meta = json.loads(str(z["meta"]))
                data = FerData(z["images"], z["labels"], z["usage"], z["ids"], meta["form"], meta["source"],
                               meta["skipped"])
            os.utime(file)  # most recently used: kept by the pruning below
        except Exception:  # empty, truncated or foreign: a damaged cache file is simply rebuilt
            pass
        else:
            return attach_votes(data, path)  # not cached: always the packaged file's, or fer2013new.csv's as it is now
    data = read_fer2013(path, skip_bad)
    try:
        _write(file, data)
    except OSError as e:  # disk full, read-only, a path under a file: the data is decoded, so carry on
        warnings.warn(f"could not write the FER2013 array cache {file} ({e}); the data was read and is used "
                      f"anyway, and will be decoded again next time. Set {CACHE_ENV} to a writable folder",
                      stacklevel=2)
    return data


def _write(file: Path, data: FerData) -> None:
    file.parent.mkdir(parents=True, exist_ok=True)
    _sweep(file.parent)
    tmp = file.with_suffix(f".{os.getpid()}.tmp.npz")  # per process: two first loads never share a file
    meta = json.dumps({"form": data.form, "source": data.source, "skipped": data.skipped})
    try:
        np.savez(tmp, images=data.images, labels=data.labels, usage=data.usage, ids=data.ids, meta=np.array(meta))
        os.replace(tmp, file)  # atomic: a concurrent reader never sees half a file
    finally:
        tmp.unlink(missing_ok=True)
    _sweep(file.parent)


def _sweep(folder: Path) -> None:
    """Remove what an interrupted write left (a *.tmp.npz of a process no longer running) and keep only the
    KEEP most recently used cache files: an old source's entry is never read again."""
    for tmp in folder.glob("fer2013-*.tmp.npz"):
        pid = tmp.name.split(".")[-3]
        if not pid.isdigit() or not _alive(int(pid)):
            tmp.unlink(missing_ok=True)
    done = sorted(folder.glob("fer2013-*.npz"), key=lambda p: p.stat().st_mtime, reverse=True)
    for old in [p for p in done if not p.name.endswith(".tmp.npz")][KEEP:]:
        old.unlink(missing_ok=True)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process
        return True
    return True
