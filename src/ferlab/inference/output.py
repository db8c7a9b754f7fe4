"""`ferlab predict` end to end: stream predictions to JSON lines, CSV or a table, save annotated copies,
and account for unreadable inputs."""
from __future__ import annotations

import csv
import json
import sys
from pathlib import Path
from typing import TextIO

from .predictor import AnnotatedWriter, Predictor

FORMATS = ("jsonl", "csv", "table")


class _Rows:
    """Writes one face per line in the chosen format, as the faces arrive."""

    def __init__(self, fmt: str, classes: tuple[str, ...], out: TextIO):
        if fmt not in FORMATS:
            raise ValueError(f"unknown format {fmt!r}; expected one of {', '.join(FORMATS)}")
        self.fmt, self.classes, self.out = fmt, classes, out
        self.header = ["source", "frame", "time_s", "track", "x", "y", "w", "h", "score", "label", *classes]
        if fmt == "csv":
            self.csv = csv.writer(out)
            self.csv.writerow(self.header)
        elif fmt == "table":
            self.widths = [24, 6, 8, 5, 5, 5, 5, 5, 6, 9, *[max(7, len(c)) for c in classes]]
            print(self._line(self.header), file=out)
            print(self._line(["-" * w for w in self.widths]), file=out)

    def _line(self, cells) -> str:
        left = (0, 9)  # source and label read better left-aligned; numbers right-aligned
        return "  ".join(f"{c:<{w}}" if i in left else f"{c:>{w}}" for i, (c, w) in enumerate(zip(cells, self.widths)))

    def write(self, face: dict):
        if self.fmt == "jsonl":
            print(json.dumps(face), file=self.out, flush=True)
            return
        cells = [face["source"] or "", "" if face["frame"] is None else face["frame"],
                 "" if face["time_s"] is None else f"{face['time_s']:.3f}",
                 "" if face.get("track") is None else face["track"], *face["box"], f"{face['score']:g}",
                 face["label"], *[f"{face['probs'][c]:.4f}" for c in self.classes]]
        if self.fmt == "csv":
            self.csv.writerow(cells)
        else:
            src = str(cells[0])
            cells[0] = src if len(src) <= self.widths[0] else "..." + src[-self.widths[0] + 3:]
            print(self._line([str(c) for c in cells]), file=self.out, flush=True)


def predict_paths(paths: list[str], predictor: Predictor, fmt: str = "jsonl", save: str | Path | None = None,
                  every: int = 1, progress: bool = True, out: TextIO | None = None,
                  err: TextIO | None = None) -> dict:
    """Predict on images, folders, videos and camera indices; write one row per face to `out` (stdout).

    Returns counts and the unreadable inputs as [(path, reason)]; processing never stops at one.
    """
    out, err = out or sys.stdout, err or sys.stderr
    rows = _Rows(fmt, predictor.classes, out)
    writer = AnnotatedWriter(save, predictor.classes) if save else None
    errors: list[tuple[str, str]] = []
    n_frames = n_faces = n_empty = 0
    try:
        for fr, faces in predictor.stream(paths, every, errors, progress, keep_images=writer is not None):
            n_frames += 1
            n_faces += len(faces)
            n_empty += not faces
            for face in faces:
                rows.write(face)
            if writer:
                writer.write(fr, faces)
    finally:
        if writer:
            writer.close_video()
    print(f"{n_faces} face(s) in {n_frames} image(s)/frame(s); {n_empty} without a face"
          + (f"; {len(errors)} input(s) unreadable" if errors else ""), file=err)
    if writer and writer.written:
        print(f"annotated copies in {save}/ ({len(writer.written)} file(s))", file=err)
    if errors:
        print("unreadable inputs:", *(f"  {reason}" for _, reason in errors), sep="\n", file=err)
    return {"frames": n_frames, "faces": n_faces, "frames_without_face": n_empty, "errors": errors,
            "saved": [str(p) for p in (writer.written if writer else [])]}
