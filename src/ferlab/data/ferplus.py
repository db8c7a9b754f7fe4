"""FER+ crowd labels for FER2013's faces: every face's 10 votes, and the labels and training targets made of them.

FER+ (Barsoum et al., ICMI 2016; github.com/microsoft/FERPlus, MIT) had 10 annotators label every FER2013 face as
one of 8 emotions (FER2013's 7 and contempt), unknown, or NF (not a face). Where the votes come from:

  Kaggle folder layout   the packaged ferplus_votes.csv.gz (matched to the JPEGs by their pixels), looked up by split
                         folder, class and file name: any folder above train/ and test/, any class folder alias
  fer2013.csv,           FER+'s own fer2013new.csv, found beside it (the same folder or archive), row for row: FER+'s
  icml_face_data.csv     file follows the original fer2013.csv. FER+'s image names (fer0000123.png) are not row
                         numbers: its numbering skips some of the rows FER+ dropped and not others (its PublicTest
                         names start at fer0028638, fer2013.csv's PublicTest at row 28709), so without fer2013new.csv
                         a CSV's rows cannot be matched to votes, and carry none
  train.csv (challenge)  none

A face without votes (FER+ dropped 173 faces, mostly not faces) has a row of NO_VOTES.

Classes: ferlab's 7 in ferlab's order, then contempt (FERPLUS_CLASSES), so that a FER+ model's first 7 outputs are
FER2013's classes. The FER+ majority of a face is its most voted of FER+'s 10 columns, a tie going to the column
FER+ lists first (as numpy's argmax in FER+'s own code); a face whose majority is unknown or NF has no label.
"""
from __future__ import annotations

import csv
import functools
import gzip
import io
from pathlib import Path

import numpy as np

from .classes import CLASSES, class_index
from .readers import CSV_FORMS, USAGES, DataError, FerData, _csv_rows, read_beside
from .splits import Split

COLUMNS = ("neutral", "happiness", "surprise", "sadness", "anger", "disgust", "fear", "contempt", "unknown", "NF")
FERPLUS_CLASSES = (*CLASSES, "contempt")
SHARED = 7                    # FER+'s first 7 columns are FER2013's 7 emotions
EMOTIONS = len(FERPLUS_CLASSES)
# FER+'s emotion columns -> index in FERPLUS_CLASSES (happiness -> happy, sadness -> sad, anger -> angry)
CLASS_OF_COLUMN = np.array([class_index(c) for c in COLUMNS[:SHARED]] + [len(CLASSES)])
NO_VOTES = -1
VOTES_FILE = Path(__file__).with_name("ferplus_votes.csv.gz")
FERPLUS_CSV = "fer2013new.csv"
LABEL_MODES = ("fer2013", "ferplus", "ferplus_dist")
HOW_TO_GET_VOTES = ("the Kaggle folder layout gets them from ferlab's packaged vote file; fer2013.csv and "
                    f"icml_face_data.csv from FER+'s {FERPLUS_CSV} (github.com/microsoft/FERPlus) put beside them")


def classes_for(mode: str) -> tuple[str, ...]:
    """The classes a model trained with label mode `mode` predicts."""
    if mode not in LABEL_MODES:
        raise ValueError(f"labels: {mode!r} is not one of {', '.join(LABEL_MODES)}")
    return CLASSES if mode == "fer2013" else FERPLUS_CLASSES


# ----------------------------------------------------------------------------------------------- reading

@functools.lru_cache(maxsize=1)
def packaged_votes() -> dict[tuple[str, int, str], np.ndarray]:
    """(split folder, class index, file stem) -> the 10 votes (int8) of every face the packaged file gives votes."""
    keys, votes = [], []
    with gzip.open(VOTES_FILE, "rt", newline="") as f:
        rows = csv.reader(f)
        header = next(rows)
        at, cols = header.index("file"), [header.index(c) for c in COLUMNS]
        for row in rows:
            if row[cols[0]]:  # the faces FER+ dropped have empty vote columns
                keys.append(_face_key(row[at]))
                votes.append([row[i] for i in cols])
    return dict(zip(keys, np.array(votes, np.int64).astype(np.int8)))


def _face_key(name: str) -> tuple[str, int, str] | None:
    """(split folder, class index, file stem) of a path .../train|test/<class>/<file>; None for any other path.
    The stem, not the name: a copy whose JPEGs were converted to PNG keeps its votes."""
    parts = name.rsplit("/", 3)  # string splits: PurePosixPath took 0.4 s for the 35,887 faces
    if len(parts) < 3:
        return None
    try:
        return parts[-3].lower(), class_index(parts[-2]), parts[-1].rpartition(".")[0] or parts[-1]
    except ValueError:
        return None


def attach_votes(data: FerData, path: str | Path) -> FerData:
    """`data` (read from `path`) with `votes` (N, 10) int8 in FER+'s column order and `votes_source` filled in;
    see the module's notes for where they come from. A fer2013new.csv that does not follow the CSV row for row is
    a DataError naming both files and the row."""
    votes = np.full((len(data), len(COLUMNS)), NO_VOTES, np.int8)
    source = None
    if data.form == "folder":
        table = packaged_votes()
        for i, rid in enumerate(data.ids):
            v = table.get(_face_key(str(rid)))
            if v is not None:
                votes[i] = v
        source = "ferlab's packaged FER+ vote file, by file name"
    elif data.form in CSV_FORMS:
        found = read_beside(Path(path), FERPLUS_CSV)
        if found is not None:
            name, raw = found
            _votes_by_row(data, name, raw, votes)
            source = f"{name}, row for row"
    data.votes, data.votes_source = votes, source
    return data


def _votes_by_row(data: FerData, name: str, raw: bytes, out: np.ndarray) -> None:
    """Fill `out` from FER+'s fer2013new.csv (`raw`): CSV row r of `data` (its id "file:r") takes row r."""
    usage, votes = _read_ferplus_csv(raw, name)
    for i, rid in enumerate(data.ids):
        csv_name, _, rowno = str(rid).rpartition(":")
        r = int(rowno) - 2  # row 1 of both files is the header
        if r >= len(usage):
            raise DataError(f"{csv_name} row {rowno}: {name} has only {len(usage) + 1} rows; it must follow "
                            f"{csv_name} row for row (FER+'s file follows the original fer2013.csv)")
        if usage[r] != USAGES[data.usage[i]]:
            raise DataError(f"{csv_name} row {rowno} is {USAGES[data.usage[i]]} but {name} row {rowno} is "
                            f"{usage[r]}: the two files do not list the same faces row for row (FER+'s file "
                            f"follows the original fer2013.csv); remove {name} or use the one FER+ publishes")
        out[i] = votes[r]


def _read_ferplus_csv(raw: bytes, name: str) -> tuple[list[str], np.ndarray]:
    """The Usage and 10 votes of every row of FER+'s fer2013new.csv; NO_VOTES where FER+ names no image (a face
    FER+ dropped: its votes are not part of FER+)."""
    text = io.TextIOWrapper(io.BytesIO(raw), encoding="utf-8-sig", errors="replace", newline="")
    rows = _csv_rows(csv.reader(text), name)
    expected = ["usage", "image name", *(c.lower() for c in COLUMNS)]
    _, header = next(rows, (1, []))
    if [h.strip().lower() for h in header] != expected:
        raise DataError(f"{name}: not FER+'s {FERPLUS_CSV}: expected the columns Usage, Image name, "
                        f"{', '.join(COLUMNS)}; found {', '.join(h.strip() for h in header) or 'none'}")
    usage, votes = [], []
    for rowno, row in rows:
        if len(row) != len(expected):
            raise DataError(f"{name} row {rowno}: {len(row)} fields, expected {len(expected)}")
        usage.append(row[0].strip())
        if not row[1].strip():
            votes.append([NO_VOTES] * len(COLUMNS))
            continue
        try:
            v = [int(x) for x in row[2:]]
        except ValueError:
            v = [-1]
        if min(v) < 0 or max(v) > 10:
            raise DataError(f"{name} row {rowno}: votes must be whole numbers 0-10 (FER+ had 10 annotators); "
                            f"found {','.join(row[2:])}")
        votes.append(v)
    return usage, np.array(votes, np.int8).reshape(-1, len(COLUMNS))


# ----------------------------------------------------------------------------------------------- labels

def has_votes(votes: np.ndarray) -> np.ndarray:
    return votes[:, 0] != NO_VOTES


def majority(votes: np.ndarray, shared: bool = False) -> np.ndarray:
    """Each face's FER+ majority as an index into FERPLUS_CLASSES, -1 where it has none: no votes, or a majority
    of unknown or NF. Ties go to the column FER+ lists first. With `shared`, the majority over the 7 emotions
    FER2013 also labels (contempt, unknown and NF votes ignored; -1 where none of the 7 has a vote)."""
    v = votes[:, :SHARED] if shared else votes
    top = v.argmax(1)
    ok = has_votes(votes) & (v.max(1) > 0) & (top < EMOTIONS)
    out = np.full(len(votes), -1, np.int64)
    out[ok] = CLASS_OF_COLUMN[top[ok]]
    return out


def distribution(votes: np.ndarray, classes: int = EMOTIONS) -> np.ndarray:
    """(N, classes) float32 vote shares over the first `classes` of FERPLUS_CLASSES (8: with contempt; 7:
    FER2013's, renormalised without contempt), in FERPLUS_CLASSES' order; all 0 where a face has none."""
    counts = np.zeros((len(votes), EMOTIONS), np.float32)
    counts[:, CLASS_OF_COLUMN] = votes[:, :EMOTIONS]
    counts = counts[:, :classes]
    counts[~has_votes(votes)] = 0
    total = counts.sum(1, keepdims=True)
    return np.divide(counts, total, out=np.zeros_like(counts), where=total > 0)


def blend_targets(labels: np.ndarray, votes: np.ndarray, blend: float, smoothing: float = 0.0) -> np.ndarray:
    """(N, 7) float32 targets: (1 - blend) x the FER2013 label as a one-hot, smoothed as label smoothing does
    ((1 - smoothing) x one-hot + smoothing / 7), + blend x the FER+ vote shares over the 7 shared emotions. A face
    without votes for any of the 7 keeps its smoothed one-hot."""
    k = len(CLASSES)
    hard = np.full((len(labels), k), smoothing / k, np.float32)
    hard[np.arange(len(labels)), labels] += 1 - smoothing
    shares = distribution(votes, k)
    voted = shares.sum(1) > 0
    hard[voted] = (1 - blend) * hard[voted] + blend * shares[voted]
    return hard


def relabel(splits: dict[str, Split], mode: str) -> dict[str, Split]:
    """The splits as label mode `mode` trains and scores them. fer2013: unchanged. ferplus, ferplus_dist: on every
    split, only the faces with a FER+ majority (see `majority`), labelled with it (an index of FERPLUS_CLASSES)."""
    classes_for(mode)  # a known mode
    if mode == "fer2013":
        return splits
    out = {}
    for name, s in splits.items():
        if s.votes is None or not has_votes(s.votes).any():
            raise DataError(f"labels: {mode} needs FER+ votes, and no face of the {name} split has any: "
                            f"{HOW_TO_GET_VOTES}")
        label = majority(s.votes)
        keep = label >= 0
        out[name] = Split(s.images[keep], label[keep], name, s.votes[keep])
    return out


def left_out(votes: np.ndarray) -> tuple[int, int]:
    """How many faces the ferplus label modes leave out: (without votes, with an unknown or NF majority)."""
    voted = has_votes(votes)
    return int((~voted).sum()), int((voted & (majority(votes) < 0)).sum())


def train_targets(split: Split, mode: str, blend: float = 0.0, smoothing: float = 0.0) -> np.ndarray | None:
    """Soft targets (N, classes) for the training faces of a relabelled split, label smoothing included; None
    where the labels are the targets (fer2013 without a blend, ferplus). ferplus_dist: the vote shares over the
    8 emotions; fer2013 with `blend` > 0: `blend_targets`."""
    if mode == "ferplus_dist":
        return (1 - smoothing) * distribution(split.votes) + smoothing / EMOTIONS
    if mode == "fer2013" and blend > 0:
        votes = split.votes if split.votes is not None else np.full((len(split), len(COLUMNS)), NO_VOTES, np.int8)
        return blend_targets(split.labels, votes, blend, smoothing)
    return None


# ----------------------------------------------------------------------------------------------- report

def vote_report(splits: dict[str, Split], source: str | None) -> str:
    """`ferlab data --stats`: how many faces of each split carry votes, how often the FER2013 label is the FER+
    majority over the 7 shared emotions (overall and per FER2013 class) and over all 10 columns (the label of the
    ferplus modes; among all faces with votes), and what the ferplus modes leave out."""
    if source is None or not any(s.votes is not None and has_votes(s.votes).any() for s in splits.values()):
        return f"FER+ votes: none of these faces has any ({HOW_TO_GET_VOTES})"
    lines = [f"FER+ votes (from {source}):",
             f"{'':<25}FER2013 label = FER+ majority over",
             f"{'split':<6}{'faces':>7}{'with votes':>12}{'7 shared emotions':>19}{'all 10 columns':>16}"]
    per_class = {}
    for name, s in splits.items():
        maj = majority(s.votes, shared=True)
        both, voted = maj >= 0, has_votes(s.votes)
        agree = maj == s.labels
        lines.append(f"{name:<6}{len(s):>7}{int(voted.sum()):>12}{_pct(agree[both].sum(), both.sum()):>19}"
                     f"{_pct((majority(s.votes) == s.labels)[voted].sum(), voted.sum()):>16}")
        per_class[name] = [_pct((agree & both & (s.labels == k)).sum(), (both & (s.labels == k)).sum())
                           for k in range(len(CLASSES))]
    lines += ["(7 shared: contempt, unknown and NF votes ignored; all 10: a contempt, unknown or NF majority "
              "disagrees; a tie goes", "to the column FER+ lists first)", "",
              "FER2013 label = FER+ majority over the 7 shared emotions, per FER2013 class:",
              f"{'class':<10}" + "".join(f"{n:>8}" for n in splits)]
    lines += [f"{c:<10}" + "".join(f"{per_class[n][k]:>8}" for n in splits) for k, c in enumerate(CLASSES)]
    counts = {n: (int((majority(s.votes) >= 0).sum()), *left_out(s.votes)) for n, s in splits.items()}
    lines += ["", "labels: ferplus / ferplus_dist keep " + ", ".join(f"{n} {c[0]}" for n, c in counts.items())
              + " faces, leaving out", "those without votes (" + ", ".join(f"{n} {c[1]}" for n, c in counts.items())
              + ") and with an unknown or NF majority (" + ", ".join(f"{n} {c[2]}" for n, c in counts.items()) + ")"]
    return "\n".join(lines)


def _pct(num, den) -> str:
    return f"{100 * num / den:.1f}%" if den else "-"
