"""`ferlab predict` end to end: stream predictions to JSON lines, CSV or a table, save annotated copies
(`AnnotatedWriter`, under names that never replace a file), and account for unreadable inputs."""
from __future__ import annotations

import csv
import json
import os
import sys
from pathlib import Path
from typing import TextIO

from PIL import Image

from .._atomic import WriteError, replacing
from .draw import draw_faces
from .faces import LANDMARKS
from .predictor import Predictor
from .sources import IMAGE_EXTS, Frame, expand_sources
from .video import H264Writer, VideoSummary

FORMATS = ("jsonl", "json", "csv", "table")


class _Rows:
    """Writes one row per face as the faces arrive, and one row for each image or frame without a face and
    for each unreadable input, so every input shows up. Probabilities are rounded to 4 decimals; paths are
    written whole (the table puts the source last, where its length breaks no column). CSV ends with each
    face's five landmarks, x and y (empty without them), after the columns it has always had."""

    def __init__(self, fmt: str, classes: tuple[str, ...], out: TextIO):
        if fmt not in FORMATS:
            raise ValueError(f"unknown format {fmt!r}; expected one of {', '.join(FORMATS)}")
        self.fmt, self.classes, self.out = fmt, classes, out
        self.rows: list[dict] = []  # json: every row, printed as one list by close()
        self.header = ["source", "frame", "time_s", "track", "x", "y", "w", "h", "score", "label", *classes,
                       "error"]
        if fmt == "csv":
            self.csv = csv.writer(out)
            self.csv.writerow(self.header + [f"{n}_{xy}" for n in LANDMARKS for xy in "xy"])
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
            marks = face.get("landmarks") or {}
            self.csv.writerow([face.get("source") or "", *cells, face.get("error") or "",
                               *(v for n in LANDMARKS for v in marks.get(n, ("", "")))])
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
            "landmarks": None, "label": None, "probs": None}


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


def free_name(path: Path, taken=(), inputs=frozenset()) -> Path:
    """`path` if no file has that name yet, else the first free one of x_annotated.jpg (when x.jpg is one of
    `inputs`, as `_file_id`s), x-2.jpg, x-3.jpg, ...: ferlab's outputs never replace a file, be it an input
    (`--save` into the inputs' own folder), another file the user keeps there, or one in `taken` (the copies
    this run wrote: a/x.jpg and b/x.jpg both given)."""
    if _file_id(path) in inputs:
        path = path.with_name(f"{path.stem}_annotated{path.suffix}")
    stem, i = path.stem, 2
    while path in taken or os.path.lexists(path):
        path, i = path.with_name(f"{stem}-{i}{path.suffix}"), i + 1
    return path


def _file_id(path) -> tuple[int, int] | None:
    """(device, inode) of an existing file, the same for every name of it (links, ./a.png, ../x/a.png)."""
    try:
        st = os.stat(path)
    except (OSError, ValueError):
        return None
    return (st.st_dev, st.st_ino)


class AnnotatedWriter:
    """`--save DIR`: annotated copies of images; per video, an annotated H.264 MP4 (frames as sampled) and its
    summary, the emotion share over time as `<video>_emotions.csv` and `<video>_timeline.png`. Each file
    appears whole or not at all: one that cannot be written (disk full) raises WriteError and leaves nothing;
    `written` lists the files complete so far."""

    def __init__(self, out_dir: str | Path, classes: tuple[str, ...], inputs=()):
        self.out_dir = Path(out_dir)
        self.classes = tuple(classes)
        self.written: list[Path] = []
        self._inputs = {_file_id(p) for p, _ in expand_sources(list(inputs))} - {None}  # never written over
        self._video = None
        self._video_source = None
        self._summary = None
        self._summary_stem: Path | None = None

    def _target(self, fr: Frame, suffix: str | None = None) -> Path:
        src = Path(fr.source or "image.png")
        rel = src.relative_to(fr.root) if fr.root is not None else Path(src.name)
        if fr.root is not None:
            rel = Path(fr.root.name) / rel
        if suffix:
            rel = rel.with_name(rel.stem + suffix)
        path = self.out_dir / rel
        if fr.frame is None and path.suffix.lower() not in IMAGE_EXTS:
            path = path.with_suffix(".png")
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise WriteError.from_os(path.parent, e) from None
        return self._free(path)

    def _free(self, path: Path) -> Path:
        return free_name(path, self.written, self._inputs)

    def write(self, fr: Frame, faces: list[dict]):
        img = draw_faces(fr.image, faces)
        if fr.frame is None:
            self.close_video()
            path = self._target(fr)
            with replacing(path) as tmp:
                Image.fromarray(img).save(tmp)
            self.written.append(path)
            return
        if fr.source != self._video_source:
            self.close_video()
            path = self._target(fr, "_annotated.mp4")
            h, w = img.shape[:2]
            self._video = H264Writer(path, fr.fps or 25.0, (w, h))
            self._video_source = fr.source
            self._summary = VideoSummary(str(fr.source), self.classes)
            self._summary_stem = path.with_name("".join(path.stem.rsplit("_annotated", 1)))  # x_annotated-2 -> x-2
        self._video.write(img)
        self._summary.add(fr.frame, fr.time_s, faces)

    def close_video(self):
        video, summary, stem = self._video, self._summary, self._summary_stem
        self._video, self._video_source, self._summary = None, None, None
        if video is None:
            return
        video.close()
        self.written.append(video.path)
        for suffix, write in (("_emotions.csv", summary.write_csv), ("_timeline.png", summary.write_timeline)):
            self.written.append(write(self._free(stem.with_name(stem.name + suffix))))

    def discard(self):
        """Stop saving: the video being written is dropped unfinished (its temporary file removed)."""
        if self._video is not None:
            self._video.abort()
        self._video, self._video_source, self._summary = None, None, None
