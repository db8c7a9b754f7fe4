"""Read FER2013 in every form users download it, from a folder or straight from an archive.

Forms (detected, in this order of preference):
  fer2013.csv         columns emotion,pixels,Usage
  icml_face_data.csv  the same content, column names with leading spaces (emotion, Usage, pixels)
  challenge           train.csv (emotion,pixels; all Training) and optionally test.csv (pixels only)
  folder              Kaggle layout train/<class>/*.jpg, test/<class>/*.jpg; split from the file prefix

Everything comes out as one `FerData`: uint8 images, canonical labels (-1 = unlabeled), and the
original Usage of every row, so the split logic downstream never needs to know the form.
"""
from __future__ import annotations

import csv
import io
import os
import tarfile
import tempfile
import zipfile
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath

import numpy as np
from PIL import Image

from .classes import CLASSES, class_index
from .images import to_8bit

USAGES = ("Training", "PublicTest", "PrivateTest", "Unlabeled")
IMAGE_SIZE = 48
IMAGE_EXTS = {".jpg", ".jpeg", ".png", ".bmp", ".gif", ".tif", ".tiff", ".webp"}
ARCHIVE_SUFFIXES = (".zip", ".tar.gz", ".tgz", ".tar")
CSV_FORMS = ("fer2013.csv", "icml_face_data.csv")

csv.field_size_limit(1 << 24)

# What one archive member may unpack to, checked against its declared size and again while reading it, so that an
# archive bomb (gigabytes of zeros compressed to megabytes) is refused before it fills the memory. FER2013's
# largest file is fer2013.csv (about 300 MB); a face image is a few KB.
MAX_CSV_BYTES = 400 * 2**20    # a CSV member, or an archive inside the archive (Kaggle's fer2013.tar.gz: 92 MB)
MAX_IMAGE_BYTES = 8 * 2**20    # any other member: an image
MAX_UNPACKED_BYTES = 2**30     # everything a .tar(.gz) holds in memory at once (it is read in one pass)
READ_CHUNK = 2**20


class DataError(ValueError):
    """Bad or unrecognised FER2013 input; the message names the file and row."""


@dataclass
class FerData:
    images: np.ndarray   # (N, 48, 48) uint8
    labels: np.ndarray   # (N,) int8, canonical order, -1 = unlabeled
    usage: np.ndarray    # (N,) uint8 index into USAGES
    ids: np.ndarray      # (N,) str: where each row came from ("train/angry/Training_1.jpg", "fer2013.csv:17")
    form: str
    source: str
    skipped: list[str] = field(default_factory=list)
    votes: np.ndarray | None = None   # (N, 10) int8 FER+ votes, -1 rows = none (ferplus.attach_votes; never cached)
    votes_source: str | None = None   # where they came from, None when no face has any

    def __len__(self) -> int:
        return len(self.labels)

    def summary(self) -> str:
        """Human-readable description: form, image size, counts per usage and class."""
        lines = [f"source: {self.source}", f"form:   {self.form}",
                 f"images: {len(self)} of {self.images.shape[1]}x{self.images.shape[2]} grayscale"]
        if self.skipped:
            lines.append(f"skipped bad rows: {len(self.skipped)}")
        header = f"{'usage':<12}" + "".join(f"{c:>9}" for c in CLASSES) + f"{'unlabeled':>10}{'total':>8}"
        lines += ["", header]
        for u, name in enumerate(USAGES):
            sel = self.usage == u
            if not sel.any():
                continue
            counts = [int(((self.labels == k) & sel).sum()) for k in range(len(CLASSES))]
            unl = int(((self.labels < 0) & sel).sum())
            lines.append(f"{name:<12}" + "".join(f"{n:>9}" for n in counts) + f"{unl:>10}{int(sel.sum()):>8}")
        gaps = self.missing_classes()
        return "\n".join(lines + ([""] + gaps if gaps else []))

    def missing_classes(self) -> list[str]:
        """One WARNING line per (split, class) without a single labelled face, in splits that have labels: an
        empty or missing class folder, or a CSV without that label. A model never learns, or is never scored
        on, such a class."""
        out = []
        for u, name in enumerate(USAGES):
            sel = (self.usage == u) & (self.labels >= 0)
            if sel.any():
                present = set(np.unique(self.labels[sel]).tolist())
                out += [f"WARNING: no {c} faces in {name} (an empty or missing class folder, or no such label)"
                        for k, c in enumerate(CLASSES) if k not in present]
        return out


# ---------------------------------------------------------------------------------------------
# Sources: a folder, a .zip or a .tar(.gz) all look like {relative posix path -> bytes loader}.

class _Source:
    def __init__(self, path: Path, label: str | None = None):
        self.path = path
        self.label = label or str(path)  # what messages call it: "outer.zip!fer2013.tar.gz" when nested
        self._tar_cache: dict[str, bytes] | None = None
        if path.is_dir():
            self.kind = "dir"
            self.names = sorted(folder_files(path))
        elif path.name.lower().endswith(".zip"):
            self.kind = "zip"
            try:
                self._zip = zipfile.ZipFile(path)
            except (zipfile.BadZipFile, OSError) as e:
                raise DataError(f"{self.label}: not a readable zip archive ({e})") from None
            self.names = sorted(n for n in self._zip.namelist() if not n.endswith("/"))
        elif path.name.lower().endswith((".tar.gz", ".tgz", ".tar")):
            self.kind = "tar"
            # gzip streams have no random access: read every member that may be needed in one pass
            self._tar_cache = {}
            try:
                with tarfile.open(path) as tf:
                    self.names = sorted(self._read_tar(tf))
            except (tarfile.TarError, OSError, EOFError) as e:
                raise DataError(f"{self.label}: not a readable tar archive ({e})") from None
        else:
            raise DataError(f"{self.label}: expected a folder, a .zip, .tar.gz or .tar archive, or a .csv file")

    def _read_tar(self, tf: tarfile.TarFile) -> set[str]:
        """Every file member's name; into the cache, the bytes of those a FER2013 form may read (images, CSVs,
        inner archives), each within its limit (else its error, raised when it is read: a bad image is skippable)
        and all within MAX_UNPACKED_BYTES."""
        names, total = set(), 0
        for m in tf:
            if not m.isfile():
                continue
            names.add(m.name)
            if not _may_read(m.name):
                continue
            try:
                raw = _read_capped(tf.extractfile(m), m.name, f"{self.label}!{m.name}", m.size)
            except DataError as e:
                self._tar_cache[m.name] = e
                continue
            total += len(raw)
            if total > MAX_UNPACKED_BYTES:
                raise DataError(f"{self.label}: its images and CSV files unpack to more than the "
                                f"{_mib(MAX_UNPACKED_BYTES)} a FER2013 archive may hold (it is about 300 MB); "
                                "refused as a damaged archive or an archive bomb")
            self._tar_cache[m.name] = raw
        return names

    def read(self, name: str) -> bytes:
        if self.kind == "dir":
            try:
                return (self.path / name).read_bytes()
            except OSError as e:  # unreadable file: named, and skippable with --skip-bad like a corrupt one
                raise DataError(f"{name}: cannot read ({e.strerror or e})") from None
        where = f"{self.label}!{name}"
        if self.kind == "zip":
            try:
                info = self._zip.getinfo(name)
                with self._zip.open(info) as f:
                    return _read_capped(f, name, where, info.file_size)
            except DataError:
                raise
            except Exception as e:  # a damaged member: bad header, CRC, compression data, encryption
                raise DataError(f"{where}: cannot read this member of the zip archive "
                                f"({type(e).__name__}: {e})") from None
        raw = self._tar_cache[name]
        if isinstance(raw, DataError):
            raise raw
        return raw


def folder_files(root: Path) -> list[str]:
    """Every file under `root`, relative, folders behind symbolic links included (a class folder kept on another
    disk). A folder that cannot be listed, a dangling link or a link loop is an error naming it, never 0 faces."""
    def fail(e: OSError):
        raise DataError(f"{e.filename}: cannot list this folder ({e.strerror or e}); its faces would be "
                        "missing from the data. Fix its permissions or remove it") from None
    out, seen = [], {}
    for folder, _, files in os.walk(root, onerror=fail, followlinks=True):
        real = os.path.realpath(folder)
        if real in seen:  # reached again through a link: walking on would never end, or read the faces twice
            raise DataError(f"{folder} is {seen[real]} again, through a symbolic link (a link loop, or the same "
                            "faces twice); remove the link")
        seen[real] = folder
        for f in files:
            p = Path(folder) / f
            if p.is_file():
                out.append(p.relative_to(root).as_posix())
            elif p.is_symlink() and not p.exists():
                raise DataError(f"{p}: a symbolic link to {os.readlink(p)}, which does not exist; its faces would "
                                "be missing from the data. Fix or remove the link")
    return out


def _may_read(name: str) -> bool:
    """Whether a FER2013 form may read this member: an image, a CSV or an inner archive."""
    return PurePosixPath(name).suffix.lower() in IMAGE_EXTS or name.lower().endswith((".csv", *ARCHIVE_SUFFIXES))


def _member_limit(name: str) -> tuple[int, str]:
    """The most bytes a member may unpack to, and what it is called in messages."""
    if name.lower().endswith(".csv"):
        return MAX_CSV_BYTES, "CSV file"
    if name.lower().endswith(ARCHIVE_SUFFIXES):
        return MAX_CSV_BYTES, "inner archive"
    return MAX_IMAGE_BYTES, "image"


def _mib(n: int) -> str:
    return f"{n / 2**20:,.0f} MiB"


def _read_capped(f, name: str, where: str, declared: int) -> bytes:
    """A member's bytes, read in chunks: refused by its declared size before reading, and as soon as what it
    really unpacks to passes its limit, so an archive bomb costs one chunk over the limit, never its full size."""
    limit, kind = _member_limit(name)
    if declared > limit:
        raise DataError(f"{where}: unpacks to {_mib(declared)}, more than the {_mib(limit)} a FER2013 {kind} may "
                        "hold; refused unread as a damaged archive or an archive bomb")
    buf = io.BytesIO()
    while chunk := f.read(READ_CHUNK):
        if buf.tell() + len(chunk) > limit:
            raise DataError(f"{where}: unpacks to more than the {_mib(limit)} a FER2013 {kind} may hold; "
                            "refused as a damaged archive or an archive bomb")
        buf.write(chunk)
    return buf.getvalue()


def _find(names: list[str], basename: str) -> str | None:
    hits = [n for n in names if PurePosixPath(n).name.lower() == basename and "__MACOSX" not in n]
    return min(hits, key=len) if hits else None


def read_beside(path: Path, basename: str) -> tuple[str, bytes] | None:
    """(name, bytes) of a file called `basename` where FER2013 is read from (beside a CSV file, or in its folder or
    archive: the shortest path; in a .tar(.gz), the first), read within the CSV limit; None where there is none."""
    if path.is_file() and path.suffix.lower() == ".csv":
        found = [p for p in path.parent.iterdir() if p.name.lower() == basename and p.is_file()]
        if not found:
            return None
        name = found[0].name
        try:
            with open(found[0], "rb") as f:
                return name, _read_capped(f, name, str(found[0]), found[0].stat().st_size)
        except OSError as e:
            raise DataError(f"{found[0]}: cannot read ({e.strerror or e})") from None
    if path.is_dir() or path.name.lower().endswith(".zip"):
        src = _Source(path)
        name = _find(src.names, basename)
        return (name, src.read(name)) if name else None
    if path.name.lower().endswith((".tar.gz", ".tgz", ".tar")):  # a stream: the first one, not read past
        try:
            with tarfile.open(path) as tf:
                for m in tf:
                    if m.isfile() and PurePosixPath(m.name).name.lower() == basename and "__MACOSX" not in m.name:
                        return m.name, _read_capped(tf.extractfile(m), m.name, f"{path}!{m.name}", m.size)
        except (tarfile.TarError, OSError, EOFError) as e:
            raise DataError(f"{path}: not a readable tar archive ({e})") from None
    return None


def _folder_images(names: list[str]) -> list[tuple[str, str, str]]:
    """(name, split_dir, class_dir) for every image file laid out as .../(train|test)/<class>/<file>."""
    out = []
    for n in names:
        p = PurePosixPath(n)
        if "__MACOSX" in p.parts or p.name.startswith("."):
            continue
        if len(p.parts) >= 3 and p.parts[-3].lower() in ("train", "test"):
            out.append((n, p.parts[-3].lower(), p.parts[-2]))
    return out


# ---------------------------------------------------------------------------------------------
# Row parsers

def _parse_pixels(text: str, where: str) -> np.ndarray:
    try:  # 3x faster than converting split() strings: ~12 s instead of ~37 s for all of fer2013.csv
        arr = np.fromstring(text, dtype=np.int64, sep=" ")
    except ValueError:  # unparsable token: the strict path below says which
        arr = None
    if arr is None or arr.size != IMAGE_SIZE * IMAGE_SIZE:
        parts = text.split()
        if len(parts) != IMAGE_SIZE * IMAGE_SIZE:
            raise DataError(f"{where}: pixels has {len(parts)} values, expected {IMAGE_SIZE * IMAGE_SIZE} (48x48)")
        try:
            arr = np.array(parts, dtype=np.int64)
        except ValueError:
            raise DataError(f"{where}: pixels must be integers 0-255, found {_first_non_int(parts)!r}") from None
    if arr.min() < 0 or arr.max() > 255:
        raise DataError(f"{where}: pixel value out of range 0-255 (min {arr.min()}, max {arr.max()})")
    return arr.astype(np.uint8).reshape(IMAGE_SIZE, IMAGE_SIZE)


def _first_non_int(parts: list[str]) -> str:
    for p in parts:  # int(), not str.isdigit(): "²" is a digit to isdigit() yet no integer
        try:
            int(p)
        except ValueError:
            return p
    return "?"


def _parse_label(text: str, where: str) -> int:
    try:
        v = int(text.strip())
    except ValueError:
        v = -99
    if not 0 <= v < len(CLASSES):
        raise DataError(f"{where}: unknown emotion label {text.strip()!r}; expected an integer 0-6 "
                        f"({', '.join(f'{i} {c}' for i, c in enumerate(CLASSES))})")
    return v


def _csv_rows(reader, name: str):
    """(row number, fields) from a csv.reader, rows counted as a spreadsheet shows them (the header is row 1).
    A CSV the parser gives up on (a field over csv.field_size_limit()) is a DataError naming the row: where the
    parser lost its place the rest of the file cannot be trusted, so not even --skip-bad goes on."""
    rowno = 0
    while True:
        rowno += 1
        try:
            row = next(reader)
        except StopIteration:
            return
        except csv.Error as e:
            raise DataError(f"{name} row {rowno}: unreadable CSV ({e}); a FER2013 row is about 8 KB") from None
        yield rowno, row


def _read_csv(raw: bytes, name: str, default_usage: str | None, skip_bad: bool, skipped: list[str]):
    # undecodable bytes become U+FFFD and are reported with their row below, instead of failing the whole file.
    # Decoded as it is parsed: one decoded copy of a 300 MB file in a StringIO took 1.77 GB at peak
    text = io.TextIOWrapper(io.BytesIO(raw), encoding="utf-8-sig", errors="replace", newline="")
    rows = _csv_rows(csv.reader(text), name)
    try:
        _, header = next(rows)
    except StopIteration:
        raise DataError(f"{name}: empty CSV file") from None
    if any("\ufffd" in h for h in header):
        raise DataError(f"{name} row 1: the header is not UTF-8 text")
    header = [h.strip().lower() for h in header]
    if "pixels" not in header:
        raise DataError(f"{name}: no 'pixels' column; found columns {header}")
    ip, ie = header.index("pixels"), header.index("emotion") if "emotion" in header else None
    iu = header.index("usage") if "usage" in header else None
    if iu is None and default_usage is None:
        raise DataError(f"{name}: no 'Usage' column; found columns {header}. Expected emotion,pixels,Usage "
                        "(fer2013.csv); a file of training rows only should be named train.csv")
    images, labels, usage, ids = [], [], [], []
    for rowno, row in rows:  # row numbers as a spreadsheet shows them
        if not row:
            continue
        where = f"{name} row {rowno}"
        try:
            if any("\ufffd" in f for f in row):
                raise DataError(f"{where}: not UTF-8 text (undecodable bytes); FER2013 CSVs are plain ASCII")
            if len(row) != len(header):
                raise DataError(f"{where}: {len(row)} fields, expected {len(header)} ({', '.join(header)})")
            img = _parse_pixels(row[ip], where)
            lab = _parse_label(row[ie], where) if ie is not None else -1
            u = row[iu].strip() if iu is not None else default_usage
            if u not in USAGES[:3] and not (u == "Unlabeled" and ie is None):
                raise DataError(f"{where}: unknown Usage {u!r}; expected Training, PublicTest or PrivateTest")
        except DataError as e:
            if not skip_bad:
                raise
            skipped.append(str(e))
            continue
        images.append(img); labels.append(lab); usage.append(USAGES.index(u)); ids.append(f"{name}:{rowno}")
    return images, labels, usage, ids


def _decode_image(raw: bytes, where: str) -> np.ndarray:
    try:
        with Image.open(io.BytesIO(raw)) as im:
            im = to_8bit(im).convert("L")
            if im.size != (IMAGE_SIZE, IMAGE_SIZE):
                im = im.resize((IMAGE_SIZE, IMAGE_SIZE), Image.BILINEAR)
            return np.asarray(im, dtype=np.uint8)
    except Image.DecompressionBombError as e:  # a header claiming more pixels than PIL's limit
        raise DataError(f"{where}: too many pixels for a face image ({e})") from None
    except Exception as e:  # any decoder failure on a bad file names that file
        raise DataError(f"{where}: not a readable image ({type(e).__name__}: {e})") from None


def _usage_from_name(filename: str, split_dir: str) -> str:
    for u in USAGES[:3]:
        if filename.startswith(u + "_"):
            return u
    # No official prefix: train/ is Training; an unprefixed test/ cannot be told apart, call it PrivateTest.
    return "Training" if split_dir == "train" else "PrivateTest"


# ---------------------------------------------------------------------------------------------

def detect_form(names: list[str]) -> str | None:
    """Which FER2013 form a listing of file names holds, or None."""
    for form in CSV_FORMS:
        if _find(names, form):
            return form
    if _find(names, "train.csv"):
        return "challenge"
    if _folder_images(names):
        return "folder"
    return None


def decode_fer2013(path: str | os.PathLike, skip_bad: bool = False) -> FerData:
    """Decode FER2013's faces from a folder, archive or CSV file, without FER+ votes (`votes` None): the files as
    they are. `ferlab.data.read_fer2013` adds the votes; `load_fer2013` adds the array cache."""
    path = Path(path).expanduser()
    if not path.exists():
        raise DataError(f"{path}: no such file or folder. Point --data (or FERLAB_DATA) at your FER2013 "
                        "download: the Kaggle folder/zip, fer2013.csv, icml_face_data.csv or train.csv")
    if path.is_file() and path.suffix.lower() == ".csv":
        skipped: list[str] = []
        form = "challenge" if path.name.lower() in ("train.csv", "test.csv") else \
            ("icml_face_data.csv" if path.name.lower() == "icml_face_data.csv" else "fer2013.csv")
        default = {"train.csv": "Training", "test.csv": "Unlabeled"}.get(path.name.lower())
        try:
            raw = path.read_bytes()
        except OSError as e:
            raise DataError(f"{path}: cannot read ({e.strerror or e})") from None
        rows = _read_csv(raw, path.name, default, skip_bad, skipped)
        data = _assemble(rows, form, str(path), skipped)
    else:
        data = _read_source(_Source(path), skip_bad)
    return data


def read_files(path: str | os.PathLike, names: list[str]) -> dict[str, bytes]:
    """The stored bytes of some files of a folder, .zip or .tar(.gz) (the ids of a folder-form `FerData` read from
    `path`), e.g. to hand on the original JPEGs; names the source does not hold directly (a nested archive's
    members) are left out."""
    src = _Source(Path(path).expanduser())
    held = set(src.names)
    return {n: src.read(n) for n in names if n in held}


def _read_source(src: _Source, skip_bad: bool) -> FerData:
    form = detect_form(src.names)
    if form is None:
        return _read_nested(src, skip_bad)
    skipped: list[str] = []
    try:
        rows = _read_form(src, form, skip_bad, skipped)
    except DataError as e:  # member names alone do not say which download was bad (unless the message says)
        raise DataError(str(e) if str(e).startswith(f"{src.label}!") else f"{src.label}: {e}") from None
    return _assemble(rows, form, src.label, skipped)


def _read_nested(src: _Source, skip_bad: bool) -> FerData:
    """Kaggle's challenge zip carries fer2013.tar.gz inside it: read the first inner archive of a known form."""
    for n in src.names:
        if "__MACOSX" in n or not n.lower().endswith(ARCHIVE_SUFFIXES):
            continue
        with tempfile.TemporaryDirectory() as tmp:
            if src.kind == "dir":
                inner_path = src.path / n
            else:
                inner_path = Path(tmp) / PurePosixPath(n).name
                inner_path.write_bytes(src.read(n))
            inner = _Source(inner_path, f"{src.label}!{n}")
            if detect_form(inner.names) is not None:
                return _read_source(inner, skip_bad)
    shown = ", ".join(src.names[:8]) + (" ..." if len(src.names) > 8 else "")
    raise DataError(f"{src.label}: none of the known FER2013 forms found (fer2013.csv, icml_face_data.csv, "
                    f"train.csv, or train/<class>/*.jpg + test/<class>/*.jpg); it holds "
                    f"{len(src.names)} files: {shown or 'nothing'}")


def _read_form(src: _Source, form: str, skip_bad: bool, skipped: list[str]):
    if form in CSV_FORMS:
        name = _find(src.names, form)
        return _read_csv(src.read(name), name, None, skip_bad, skipped)
    if form == "challenge":
        name = _find(src.names, "train.csv")
        rows = _read_csv(src.read(name), name, "Training", skip_bad, skipped)
        test = _find(src.names, "test.csv")
        if test:
            more = _read_csv(src.read(test), test, "Unlabeled", skip_bad, skipped)
            rows = tuple(a + b for a, b in zip(rows, more))
        return rows
    rows = ([], [], [], [])
    for name, split_dir, cls in _folder_images(src.names):
        if PurePosixPath(name).suffix.lower() not in IMAGE_EXTS:
            err = f"{name}: not an image file (expected one of {', '.join(sorted(IMAGE_EXTS))})"
            if not skip_bad:
                raise DataError(err)
            skipped.append(err)
            continue
        try:
            label = class_index(cls)
        except ValueError as e:
            raise DataError(f"{name}: {e}") from None
        try:
            img = _decode_image(src.read(name), name)
        except DataError as e:
            if not skip_bad:
                raise
            skipped.append(str(e))
            continue
        usage = USAGES.index(_usage_from_name(PurePosixPath(name).name, split_dir))
        for lst, v in zip(rows, (img, label, usage, name)):
            lst.append(v)
    return rows


def _assemble(rows, form, source, skipped) -> FerData:
    images, labels, usage, ids = rows
    if not images:
        raise DataError(f"{source}: found the {form} form but no usable rows"
                        + (f" ({len(skipped)} bad rows skipped; first: {skipped[0]})" if skipped else ""))
    return FerData(np.stack(images), np.asarray(labels, np.int8), np.asarray(usage, np.uint8),
                   np.asarray(ids), form, source, skipped)
