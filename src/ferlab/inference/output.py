"""`ferlab predict` end to end: stream predictions to JSON lines, CSV or a table, save annotated copies,
and account for unreadable inputs."""
from __future__ import annotations

import csv
import json
import sys
from pathlib import Path
from typing import TextIO

from .._atomic import WriteError
from .predictor import AnnotatedWriter, Predictor

FORMATS = ("jsonl", "json", "csv", "table")


class _Rows:
    """Writes one row per face as the faces arrive, and one row for each image or frame without a face and
    for each unreadable input, so every input shows up. Probabilities are rounded to 4 decimals; paths are
    written whole (the table puts the source last, where its length breaks no column)."""

    def __init__(self, fmt: str, classes: tuple[str, ...], out: TextIO):
        if fmt not in FORMATS:
            raise ValueError(f"unknown format {fmt!r}; expected one of {', '.join(FORMATS)}")
        self.fmt, self.classes, self.out = fmt, classes, out
        self.rows: list[dict] = []  # json: every row, printed as one list by close()
        self.header = ["source", "frame", "time_s", "track", "x", "y", "w", "h", "score", "label", *classes,
                       "error"]
        if fmt == "csv":
            self.csv = csv.writer(out)
            self.csv.writerow(self.header)
        elif fmt == "table":
            self.widths = [6, 8, 5, 5, 5, 5, 5, 6, 9, *[max(7, len(c)) for c in classes]]
            print(self._line(self.header[1:-1] + ["source"]), file=out)
            print(self._line(["-" * w for w in self.widths] + ["-" * 6]), file=out)

    def _line(self, cells) -> str:
        # numbers right-aligned, the label left-aligned, the source (last, unpadded) whole
        return "  ".join(f"{c:<{w}}" if i == 8 else f"{c:>{w}}" for i, (c, w) in enumerate(zip(cells, self.widths))) \
            + "  " + str(cells[-1])

    def write(self, face: dict):
        face = {**face, "probs": None if face.get("probs") is None else
                {c: round(float(v), 4) for c, v in face["probs"].items()}}
        if face.get("score") is not None:
            face["score"] = round(float(face["score"]), 4)
        if self.fmt == "jsonl":
            print(json.dumps(face), file=self.out, flush=True)
            return
        if self.fmt == "json":
            self.rows.append(face)
            return
        box = face.get("box") or ["", "", "", ""]
        cells = ["" if face.get("frame") is None else face["frame"],
                 "" if face.get("time_s") is None else f"{face['time_s']:.3f}",
                 "" if face.get("track") is None else face["track"], *box,
                 "" if face.get("score") is None else f"{face['score']:g}", face.get("label") or "",
                 *(["" if face.get("probs") is None else f"{face['probs'][c]:.4f}" for c in self.classes])]
        if self.fmt == "csv":
            self.csv.writerow([face.get("source") or "", *cells, face.get("error") or ""])
        else:
            source = face.get("source") or ""
            if face.get("error"):
                cells[8] = "UNREADABLE"
                source = face["error"]
            elif face.get("label") is None:
                cells[8] = "no face"
            print(self._line([str(c) for c in cells] + [source]), file=self.out, flush=True)

    def close(self) -> None:
        """json: the one document, a list of every row (also when stopped part way: the rows so far)."""
        if self.fmt == "json":
            print(json.dumps(self.rows, indent=1), file=self.out, flush=True)

    def no_face(self, fr) -> None:
        self.write(_blank(fr.source, fr.frame, fr.time_s))

    def unreadable(self, source: str, reason: str) -> None:
        self.write({**_blank(source), "error": reason})


def _blank(source, frame=None, time_s=None) -> dict:
    """A row with no face in it: the input's place, every face field empty."""
    return {"source": source, "frame": frame, "time_s": time_s, "track": None, "box": None, "score": None,
            "label": None, "probs": None}


def predict_paths(paths: list[str], predictor: Predictor, fmt: str = "jsonl", save: str | Path | None = None,
                  every: int = 1, progress: bool = True, out: TextIO | None = None,
                  err: TextIO | None = None, video_timeout_s: float | None = None) -> dict:
    """Predict on images, folders, videos and camera indices; write one row per face to `out` (stdout).

    Returns counts, the unreadable inputs as [(path, reason)] and, when an annotated copy could not be written
    (disk full), that WriteError as "save_error"; processing never stops at one: saving stops there, the rows go
    on for every input.
    """
    out, err = out or sys.stdout, err or sys.stderr
    rows = _Rows(fmt, predictor.classes, out)
    writer = AnnotatedWriter(save, predictor.classes, inputs=paths) if save else None
    errors: list[tuple[str, str]] = []
    save_error: WriteError | None = None
    n_frames = n_faces = n_empty = 0

    def saving(step, *args):
        nonlocal save_error
        if writer is None or save_error is not None:
            return
        try:
            step(*args)
        except WriteError as e:  # the disk is full: nothing half-written stays, and nothing more is tried
            save_error = e
            writer.discard()

    try:
        for fr, faces in predictor.stream(paths, every, errors, progress, keep_images=writer is not None,
                                          video_timeout_s=video_timeout_s):
            if fr.error is not None:  # an unreadable input, in its place among the others
                rows.unreadable(fr.source, fr.error)
                continue
            n_frames += 1
            n_faces += len(faces)
            n_empty += not faces
            for face in faces:
                rows.write(face)
            if not faces:
                rows.no_face(fr)
            if writer:
                saving(writer.write, fr, faces)
    finally:
        rows.close()
        if writer:
            saving(writer.close_video)
    print(f"{n_faces} face(s) in {n_frames} image(s)/frame(s); {n_empty} without a face"
          + (f"; {len(errors)} input(s) unreadable" if errors else ""), file=err)
    if writer and writer.written:
        print(f"annotated copies in {save}/ ({len(writer.written)} file(s))", file=err)
    if errors:
        print("unreadable inputs:", *(f"  {reason}" for _, reason in errors), sep="\n", file=err)
    return {"frames": n_frames, "faces": n_faces, "frames_without_face": n_empty, "errors": errors,
            "saved": [str(p) for p in (writer.written if writer else [])], "save_error": save_error}
