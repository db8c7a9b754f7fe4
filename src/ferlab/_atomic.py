"""Files ferlab writes appear whole or not at all: each is written under a temporary name beside its place and
renamed over it once complete. A write that fails (disk full, read-only folder, quota) removes the temporary
file and becomes one `WriteError`, whose message names the file and says what is wrong."""
from __future__ import annotations

import errno
import os
from contextlib import contextmanager, suppress
from pathlib import Path
from typing import Iterator


class WriteError(RuntimeError):
    """A file could not be written; nothing of it was left behind. `full`: the file system ran out of space."""

    def __init__(self, path: str | Path, reason: str, full: bool = False):
        self.path, self.reason, self.full = Path(path), reason, full
        super().__init__(f"cannot write {path}: {reason}")

    @classmethod
    def from_os(cls, path: str | Path, e: OSError) -> WriteError:
        full = e.errno in (errno.ENOSPC, errno.EDQUOT)
        return cls(path, "no space left on device" if e.errno == errno.ENOSPC else
                   (e.strerror or str(e)).lower(), full)


def temp_name(path: Path) -> Path:
    """Where `path` is written before it is complete: hidden, this process's own, and with the same suffix, so
    writers that choose the format by the name (PIL, matplotlib, ffmpeg) still do."""
    return path.with_name(f".{path.stem}.{os.getpid()}.tmp{path.suffix}")


@contextmanager
def replacing(path: str | Path) -> Iterator[Path]:
    """`with replacing(path) as tmp:` write `tmp`; when the block ends it is renamed to `path` (its folder made
    first), and removed instead when the block fails. An OSError on the way is raised as a WriteError."""
    path = Path(path)
    tmp = temp_name(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        yield tmp
        os.replace(tmp, path)
    except OSError as e:
        raise WriteError.from_os(path, e) from None
    finally:
        with suppress(OSError):
            tmp.unlink(missing_ok=True)
