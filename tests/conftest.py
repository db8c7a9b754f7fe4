"""Shared fixtures: real FER2013 faces, sliced at test time from a copy of the dataset.

Nothing from the dataset is committed: every test input is built here from $FERLAB_TEST_DATA (default:
../shared/data/fer2013.tar.gz), in any form ferlab reads: a folder, .zip, .tar.gz, fer2013.csv or icml_face_data.csv.
Without it the tests that need real faces skip, with one line at the end saying how to run them;
FERLAB_REQUIRE_DATA=1 (CI) makes its absence a failure instead.
"""
from __future__ import annotations

import contextlib
import importlib.util
import io
import os
import pwd
import secrets
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path, PurePosixPath

import numpy as np
import pytest
from PIL import Image

REPO = Path(__file__).resolve().parents[1]
DATA = Path(os.environ.get("FERLAB_TEST_DATA") or REPO.parent / "shared" / "data" / "fer2013.tar.gz").expanduser()
CLASSES = ("angry", "disgust", "fear", "happy", "sad", "surprise", "neutral")
PER_CELL = 24  # images per (usage, class) in the slice
NO_DATA = (f"no FER2013 at {DATA}: the tests that need real faces were skipped. To run them, set FERLAB_TEST_DATA "
           "to a FER2013 copy (folder, .zip, .tar.gz, fer2013.csv or icml_face_data.csv)")



def load_bench(name: str):
    """bench/<name>.py as a module: tests check the pictures and clips the benchmarks build, and their measures."""
    spec = importlib.util.spec_from_file_location(f"bench_{name}", REPO / "bench" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # a dataclass of the script looks its module up
    spec.loader.exec_module(module)
    return module


@contextlib.contextmanager
def serving(app, **config):
    """`app` under a real uvicorn (keyword arguments: more uvicorn.Config settings) on a free port of 127.0.0.1, in
    a thread; yields the port, and stops the server on the way out."""
    import uvicorn
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    srv = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning", **config))
    thread = threading.Thread(target=srv.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not srv.started:
        if time.monotonic() > deadline or not thread.is_alive():
            pytest.fail("uvicorn did not start within 30 s")
        time.sleep(0.05)
    try:
        yield port
    finally:
        srv.should_exit = True
        thread.join(10)

@pytest.fixture(scope="session", autouse=True)
def _isolated_cache(tmp_path_factory):
    """Tests never read or write the user's array cache."""
    old = os.environ.get("FERLAB_CACHE")
    os.environ["FERLAB_CACHE"] = str(tmp_path_factory.mktemp("ferlab-cache"))
    yield
    if old is None:
        os.environ.pop("FERLAB_CACHE", None)
    else:
        os.environ["FERLAB_CACHE"] = old


@pytest.fixture(scope="session")
def fer_source() -> Path:
    """The FER2013 copy the tests slice; skips the test where there is none (fails with FERLAB_REQUIRE_DATA=1)."""
    if not DATA.exists():
        if os.environ.get("FERLAB_REQUIRE_DATA") == "1":  # CI has the data: its absence is a failure, not a skip
            pytest.fail(f"no FER2013 at {DATA} (FERLAB_TEST_DATA); FERLAB_REQUIRE_DATA=1 says this machine must "
                        "have it")
        pytest.skip(NO_DATA)
    return DATA


def pytest_configure(config):
    """Under pytest-xdist (`make test` runs two workers) each worker's torch gets its share of this process's cores,
    so that the workers do not oversubscribe them."""
    workers = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))
    if workers > 1:
        import torch
        cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
        torch.set_num_threads(max(1, cores // workers))


def pytest_terminal_summary(terminalreporter):
    """The skip reason for missing data once, in plain words (pytest -q shows only a count of skips)."""
    n = sum(1 for r in terminalreporter.stats.get("skipped", [])
            if isinstance(r.longrepr, tuple) and NO_DATA in str(r.longrepr[2]))
    if n:
        terminalreporter.write_line(f"{n} tests skipped: {NO_DATA}", yellow=True)


def _jpeg(pixels: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(pixels).save(buf, format="JPEG", quality=95)
    return buf.getvalue()


@pytest.fixture(scope="session")
def fer_data(fer_source):
    """The whole FER2013 copy as ferlab's reader gives it (a FerData: images, labels, usage, ids, form)."""
    from ferlab.data import read_fer2013
    return read_fer2013(fer_source)


@pytest.fixture(scope="session")
def fer_slice(fer_source, fer_data) -> dict:
    """The first PER_CELL real faces per (usage, class), read by ferlab's own reader: `names` in the Kaggle folder
    layout (test/angry/PrivateTest_123.jpg), `jpeg` the file's bytes, `pixels` those bytes decoded (48x48 uint8),
    `labels` (canonical class indices) and `usage` (Training, PublicTest, PrivateTest). A CSV copy has no files:
    names are made from the row (train/angry/Training_17.jpg) and the JPEGs encoded here."""
    from ferlab.data import USAGES
    from ferlab.data.readers import read_files
    data = fer_data
    counts: dict = {}
    rows = []
    for i, (lab, u) in enumerate(zip(data.labels.tolist(), data.usage.tolist())):
        if lab < 0 or counts.get((u, lab), 0) >= PER_CELL:
            continue
        counts[(u, lab)] = counts.get((u, lab), 0) + 1
        rows.append(i)
    ids = [str(data.ids[i]) for i in rows]
    stored = read_files(fer_source, ids) if data.form == "folder" else {}  # the original JPEGs
    out = {"names": [], "jpeg": [], "pixels": [], "labels": [], "usage": []}
    for i, id_ in zip(rows, ids):
        usage, cls = USAGES[data.usage[i]], CLASSES[data.labels[i]]
        if id_ in stored:
            raw, pixels = stored[id_], data.images[i]
            name = "/".join(PurePosixPath(id_).parts[-3:])
        else:  # a CSV row (fer2013.csv:17), or a member of an archive inside the archive
            raw = _jpeg(data.images[i])
            pixels = np.asarray(Image.open(io.BytesIO(raw)).convert("L"))
            row = id_.rpartition(":")[2] if data.form != "folder" else PurePosixPath(id_).stem.rpartition("_")[2]
            name = f"{'train' if usage == 'Training' else 'test'}/{cls}/{usage}_{row}.jpg"
        out["names"].append(name)
        out["jpeg"].append(raw)
        out["pixels"].append(pixels)
        out["labels"].append(int(data.labels[i]))
        out["usage"].append(usage)
    out["pixels"] = np.stack(out["pixels"])
    out["labels"] = np.array(out["labels"])
    return out


@pytest.fixture(scope="session")
def fer_folder(fer_slice, tmp_path_factory) -> Path:
    """The slice in the Kaggle folder layout: root/train/<class>/Training_*.jpg, root/test/<class>/..."""
    root = tmp_path_factory.mktemp("fer-folder") / "fer2013"
    for name, raw in zip(fer_slice["names"], fer_slice["jpeg"]):
        p = root / name
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_bytes(raw)
    return root


def quick_calibrated_run(data: Path, out: Path, name: str, model: str = "simple_cnn", seed: int = 3) -> Path:
    """A run folder from two quick epochs of `model` on the real slice at 1x48x48, as `fit` leaves it (best.pt
    holds the temperature fitted on the validation split)."""
    import torch

    from ferlab.engine import TrainConfig, fit
    threads = torch.get_num_threads()
    cfg = TrainConfig(name=name, model=model, input_size=48, in_channels=1, mean=[0.0], std=[1.0],
                      standardize=True, data=str(data), split="official", seed=seed, epochs=2, batch_size=16,
                      optimizer="adam", lr=1e-3, weight_decay=0.0, schedule="constant", warmup_epochs=0,
                      threads=1, device="cpu", tta=True, out_dir=str(out))
    try:
        fit(cfg, progress=False)
    finally:
        torch.set_num_threads(threads)
    return out / name


@pytest.fixture(scope="session")
def calibrated_run(fer_folder, tmp_path_factory) -> Path:
    """simple_cnn, two quick epochs, calibrated (see quick_calibrated_run)."""
    return quick_calibrated_run(fer_folder, tmp_path_factory.mktemp("calibrated"), "cal")


# ----------------------------------------------------------------------------------------------- PostgreSQL

def _pg_program(name: str) -> str | None:
    """A PostgreSQL server program: on PATH, else Debian's /usr/lib/postgresql/<version>/bin (newest)."""
    found = shutil.which(name)
    if found:
        return found
    versions = sorted(Path("/usr/lib/postgresql").glob(f"*/bin/{name}"), key=lambda p: int(p.parts[-3]))
    return str(versions[-1]) if versions else None


def _no_postgres(reason: str):
    if os.environ.get("FERLAB_REQUIRE_POSTGRES") == "1":  # CI installs the server: its absence is a failure
        pytest.fail(f"{reason}; FERLAB_REQUIRE_POSTGRES=1 says this machine must have it")
    pytest.skip(reason)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="session")
def postgres() -> dict:
    """A throwaway PostgreSQL cluster listening on 127.0.0.1 only, password-authenticated, stopped and deleted
    at the end: {"url": "postgresql://ferlab:...@127.0.0.1:PORT/optuna", "port", "user", "password", "db"}.
    Skips (fails with FERLAB_REQUIRE_POSTGRES=1) where the server or the driver is missing."""
    initdb, pg_ctl = _pg_program("initdb"), _pg_program("pg_ctl")
    if not (initdb and pg_ctl):
        _no_postgres("PostgreSQL server programs initdb/pg_ctl not found (Debian: apt-get install postgresql)")
    try:
        import psycopg
    except ImportError:
        _no_postgres("the PostgreSQL driver psycopg is not installed (pip install -e '.[sweep]')")
    as_user, owner = [], None
    if os.geteuid() == 0:  # initdb refuses to run as root: the cluster belongs to the server's own account
        try:
            owner = pwd.getpwnam("postgres")
        except KeyError:
            _no_postgres("running as root, and there is no 'postgres' account to run initdb as")
        as_user = ["runuser", "-u", "postgres", "--"]
    # not under pytest's tmp_path: that folder is private to this user, and the server's account must write here
    root = Path(tempfile.mkdtemp(prefix="ferlab-pg-"))
    user, password, db, port = "ferlab", secrets.token_hex(8), "optuna", _free_port()
    (root / "pw").write_text(password + "\n")
    (root / "sock").mkdir()
    if owner is not None:
        for p in (root, root / "pw", root / "sock"):
            os.chown(p, owner.pw_uid, owner.pw_gid)
    data, log = root / "data", root / "server.log"

    def run(*cmd):
        proc = subprocess.run([*as_user, *cmd], capture_output=True, text=True, timeout=120)
        if proc.returncode != 0:
            log_tail = log.read_text()[-2000:] if log.exists() else ""
            pytest.fail(f"{' '.join(cmd)} failed ({proc.returncode}): {proc.stdout[-2000:]}{proc.stderr[-2000:]}"
                        f"{log_tail}")

    started = False
    try:
        run(initdb, "-D", str(data), "-U", user, "--pwfile", str(root / "pw"), "--auth-local", "trust",
            "--auth-host", "scram-sha-256", "--no-locale", "-E", "UTF8", "--no-sync")
        # fsync off: a test database need not survive a power cut, and the disk is shared
        options = f"-c listen_addresses=127.0.0.1 -p {port} -k {root / 'sock'} -c fsync=off -c max_connections=200"
        run(pg_ctl, "-D", str(data), "-l", str(log), "-o", options, "-w", "-t", "60", "start")
        started = True
        with psycopg.connect(host="127.0.0.1", port=port, user=user, password=password, dbname="postgres",
                             connect_timeout=10, autocommit=True) as con:
            con.execute(f"CREATE DATABASE {db}")
        yield {"url": f"postgresql://{user}:{password}@127.0.0.1:{port}/{db}", "port": port, "user": user,
               "password": password, "db": db}
    finally:
        if started:
            subprocess.run([*as_user, pg_ctl, "-D", str(data), "-m", "immediate", "-w", "-t", "60", "stop"],
                           capture_output=True, timeout=120)
        shutil.rmtree(root, ignore_errors=True)


# ----------------------------------------------------------------------------------------------- full disk

class SmallDisk:
    """Real file systems that fill up: small tmpfs mounts (root only), unmounted when the test ends."""

    def __init__(self, root: Path):
        self.root, self.mounted = root, []

    def mount(self, size: int) -> Path:
        """A fresh, empty tmpfs of `size` bytes; skips the test where it cannot be mounted."""
        if os.geteuid() != 0:
            pytest.skip("a small tmpfs to fill up needs root (mount -t tmpfs)")
        where = self.root / f"disk{len(self.mounted)}"
        where.mkdir(parents=True)
        proc = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(where)],
                              capture_output=True, text=True, timeout=60)
        if proc.returncode != 0:
            pytest.skip(f"cannot mount a tmpfs here: {proc.stderr.strip()}")
        self.mounted.append(where)
        return where

    @staticmethod
    def leave(folder: Path, free: int) -> Path:
        """Fill the file system of `folder` with one file, so that about `free` bytes (rounded to its blocks) stay
        free; returns that file, to delete when room is wanted again."""
        st = os.statvfs(folder)
        filler = folder / "filler"
        with open(filler, "wb") as f:
            f.write(bytes(max(0, st.f_bavail * st.f_frsize - free)))
        return filler


@pytest.fixture
def small_disk(tmp_path):
    disk = SmallDisk(tmp_path / "small-disks")
    yield disk
    for where in disk.mounted:
        subprocess.run(["umount", "--lazy", str(where)], capture_output=True, timeout=60)  # also if a file is open
