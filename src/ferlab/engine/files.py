"""Files that appear whole or not at all: written to a temporary file beside them, then renamed over them."""
from __future__ import annotations

import os
from pathlib import Path


def write_atomically(path: str | Path, write) -> Path:
    """`write(tmp)`, then rename tmp over `path`: a reader, or a run resumed after a kill, finds the old file or the
    new one, never half of one. The temporary name is this process's own (.NAME.PID.tmp), so processes writing one
    file at once never write into the same temporary file; it is removed when `write` fails."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        write(tmp)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return path
