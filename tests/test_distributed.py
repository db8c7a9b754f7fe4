"""`ferlab train` under torchrun (2 CPU processes, gloo) on real FER2013 faces: on one host, and on two hosts
made of network namespaces (one process each, c10d rendezvous).

With identical global batches, DDP's averaged gradient is the big-batch gradient, so a model without
BatchNorm and without dropout (simple_cnn, dropout 0, augmentation off) must track a single-process run
with the same global batch and seed up to float summation order.
"""
from __future__ import annotations

import csv
import json
import os
import shutil
import socket
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
import yaml

from ferlab.data import load_fer2013, make_splits
from ferlab.engine import evaluate, fit, load_checkpoint, load_config, model_from_checkpoint

PER_RANK_BATCH = 8
EPOCHS = 2
FRACTION = 0.9  # 151 of the slice's 168 faces per split: an odd count, so the ranks' validation shards differ


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _torchrun(args: list[str], cwd) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2", "--master-addr", "127.0.0.1",
           "--master-port", str(_free_port()), *args]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=300)


def _rows(run_dir) -> list[dict]:
    with (run_dir / "metrics.csv").open() as f:
        return list(csv.DictReader(f))


@pytest.fixture(scope="module")
def config_file(fer_folder, tmp_path_factory):
    root = tmp_path_factory.mktemp("ddp")
    cfg = dict(name="ddp", model="simple_cnn", model_args={"dropout": 0.0}, input_size=48, in_channels=1,
               mean=[0.0], std=[1.0], data=str(fer_folder), split="official", seed=3, epochs=EPOCHS, fraction=FRACTION,
               batch_size=PER_RANK_BATCH, optimizer="adam", lr=1e-3, weight_decay=0.0, schedule="constant",
               warmup_epochs=0, augment=dict(hflip=0, rotate=0, scale=0, translate=0, erase=0), tta=False,
               threads=1, device="cpu", out_dir=str(root / "runs"))  # gloo: also on a 1-GPU machine
    path = root / "ddp.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


@pytest.fixture(scope="module")
def ddp_run(config_file):
    """`ferlab train` under torchrun with 2 processes: (completed process, runs folder)."""
    proc = _torchrun(["-m", "ferlab.cli", "train", str(config_file), "--no-progress"], config_file.parent)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return proc, config_file.parent / "runs"


@pytest.fixture(scope="module")
def single_run(config_file, tmp_path_factory):
    """The same config in this process with the same global batch (2 x per-rank batch): its run folder."""
    out = tmp_path_factory.mktemp("single")
    cfg = load_config(config_file, {"batch_size": 2 * PER_RANK_BATCH, "out_dir": str(out)})
    threads = torch.get_num_threads()
    try:
        summary = fit(cfg, progress=False)
    finally:
        torch.set_num_threads(threads)  # fit applies the config's threads=1 to this whole test process
    return out / summary["name"]


def test_run_folder_written_once_and_complete(ddp_run):
    proc, runs = ddp_run
    dirs = list(runs.iterdir())
    assert [d.name for d in dirs] == ["ddp"], f"expected one run folder 'ddp', found {[d.name for d in dirs]}"
    run = dirs[0]
    for name in ("config.yaml", "metrics.csv", "best.pt", "last.pt", "summary.json"):
        assert (run / name).is_file(), f"{name} missing from {run}: {sorted(p.name for p in run.iterdir())}"
    assert [int(r["epoch"]) for r in _rows(run)] == list(range(1, EPOCHS + 1))
    written = yaml.safe_load((run / "config.yaml").read_text())
    assert (written["batch_size"], written["world_size"], written["global_batch_size"]) == \
        (PER_RANK_BATCH, 2, 2 * PER_RANK_BATCH)
    summary = json.loads((run / "summary.json").read_text())
    assert summary["name"] == "ddp" and summary["epochs"] == EPOCHS
    assert (summary["hosts"], summary["world_size"]) == ([socket.gethostname()] * 2, 2)  # one name per rank
    assert load_checkpoint(run / "last.pt")["world_size"] == 2
    # rank 0 alone prints: one header line and one summary table, not one per process
    assert proc.stdout.count("2 process(es) x batch 8 = global batch 16") == 1, proc.stdout
    assert proc.stdout.count("test accuracy  ") == 1, proc.stdout


# Float summation order (an all-reduce of two half-batch means vs one mean) differs by ~1e-7 per step;
# after the few dozen Adam steps here the losses agree to ~1e-6. Accuracy may flip by one borderline face
# of the 151 in each split.
LOSS_TOL = 1e-4
ONE_FACE = 100 / 151 + 1e-9


def _assert_same_trajectory(rows: list[dict], reference: list[dict]):
    assert len(rows) == len(reference) == EPOCHS
    for r, ref in zip(rows, reference):
        for key in ("train_loss", "val_loss"):
            assert abs(float(r[key]) - float(ref[key])) < LOSS_TOL, (r["epoch"], key, r[key], ref[key])
        for key in ("train_accuracy", "val_accuracy"):
            assert abs(float(r[key]) - float(ref[key])) <= ONE_FACE, (r["epoch"], key, r[key], ref[key])


def test_ddp_matches_single_process_with_same_global_batch(ddp_run, single_run):
    _, runs = ddp_run
    rows, reference = _rows(runs / "ddp"), _rows(single_run)
    _assert_same_trajectory(rows, reference)
    assert float(rows[-1]["train_loss"]) < float(rows[0]["train_loss"]), "the run did not learn at all"
    ddp_summary = json.loads((runs / "ddp" / "summary.json").read_text())
    single_summary = json.loads((single_run / "summary.json").read_text())
    assert abs(ddp_summary["test_accuracy"] - single_summary["test_accuracy"]) <= ONE_FACE


def test_sharded_validation_is_the_saved_models_accuracy_on_the_whole_split(ddp_run):
    _, runs = ddp_run
    ckpt = load_checkpoint(runs / "ddp" / "best.pt")
    c = ckpt["config"]
    val = make_splits(load_fer2013(c["data"]), c["split"], seed=c["seed"], fraction=c["fraction"])["val"]
    assert len(val) % 2 == 1  # shards of 76 and 75 faces
    # the epoch's metrics describe the network as trained, before the temperature fitted when the run ended
    model, pre = model_from_checkpoint(ckpt, calibrated=False)
    alone = evaluate(model, torch.from_numpy(val.images), torch.from_numpy(val.labels), pre, torch.device("cpu"))
    assert ckpt["metrics"]["val_accuracy"] == pytest.approx(alone["accuracy"], abs=1e-9)
    assert ckpt["metrics"]["val_loss"] == pytest.approx(alone["loss"], abs=1e-5)


STOP_AFTER_FIRST_EPOCH = textwrap.dedent("""
    import sys
    from ferlab.engine import fit, load_config

    class Interrupted(Exception):
        pass

    def stop(epoch, metrics):
        raise Interrupted

    try:
        fit(load_config(sys.argv[1], sys.argv[2:]), progress=False, epoch_hook=stop)
    except Interrupted:
        pass
""")


def test_distributed_resume_continues_the_same_trajectory(config_file, single_run, tmp_path):
    script = tmp_path / "interrupted.py"
    script.write_text(STOP_AFTER_FIRST_EPOCH)
    out = tmp_path / "runs"
    proc = _torchrun([str(script), str(config_file), f"out_dir={out}"], tmp_path)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    run = out / "ddp"
    assert [int(r["epoch"]) for r in _rows(run)] == [1] and not (run / "summary.json").exists()

    with pytest.raises(ValueError, match="trained by 2 process"):  # one process would change the global batch
        fit(load_config(config_file), resume=run, progress=False)

    proc = _torchrun(["-m", "ferlab.cli", "train", "--resume", str(run), "--no-progress"], tmp_path)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert [p.name for p in out.iterdir()] == ["ddp"]
    assert (run / "summary.json").is_file()
    _assert_same_trajectory(_rows(run), _rows(single_run))


# ----------------------------------------------------------------------------------------------- two hosts
# Two network namespaces joined by a veth pair stand in for two machines: each has its own interface, address
# and host name (a UTS namespace), and /etc/hosts that names only the two namespace addresses, so nothing
# outside them is reachable or used. The processes still share this machine's files, as nodes share a NFS.

SUBNET = "10.213.7"  # private to the namespaces: the root namespace never gets an address in it
RDZV_PORT = 29500


def _ip(*args: str) -> None:
    proc = subprocess.run(["ip", *args], capture_output=True, text=True, timeout=30)
    if proc.returncode != 0:
        raise RuntimeError(f"ip {' '.join(args)}: {proc.stderr.strip()}")


@pytest.fixture
def two_hosts():
    """[(namespace, interface, address, host name)] for two joined namespaces; deleted at the end."""
    if os.geteuid() != 0:
        pytest.skip("making network namespaces needs root (ip netns add); run as root, as CI does")
    missing = [p for p in ("ip", "unshare") if shutil.which(p) is None]
    if missing:
        pytest.skip(f"{' and '.join(missing)} not found (Debian: iproute2, util-linux)")
    tag = os.getpid()
    hosts = [(f"ferlab-{n}-{tag}", f"fl{n}{tag}"[:15], f"{SUBNET}.{i + 1}", f"ferlab-host-{n}")
             for i, n in enumerate("ab")]
    etc = [Path("/etc/netns") / ns for ns, *_ in hosts]  # `ip netns exec` mounts these over /etc
    etc_made = not etc[0].parent.exists()
    made = []

    def remove_hosts_files():
        for folder in etc:
            shutil.rmtree(folder, ignore_errors=True)
        if etc_made and etc[0].parent.exists() and not any(etc[0].parent.iterdir()):
            etc[0].parent.rmdir()
    try:
        for ns, *_ in hosts:
            _ip("netns", "add", ns)
            made.append(ns)
        (a, ifa, *_), (b, ifb, *_) = hosts
        _ip("link", "add", ifa, "type", "veth", "peer", "name", ifb)
        names = "127.0.0.1 localhost\n" + "".join(f"{addr} {host}\n" for _, _, addr, host in hosts)
        for (ns, iface, addr, _), folder in zip(hosts, etc):
            _ip("link", "set", iface, "netns", ns)
            _ip("-n", ns, "addr", "add", f"{addr}/24", "dev", iface)
            _ip("-n", ns, "link", "set", iface, "up")
            _ip("-n", ns, "link", "set", "lo", "up")
            folder.mkdir(parents=True, exist_ok=True)
            (folder / "hosts").write_text(names)
    except (RuntimeError, OSError) as e:
        for ns in made:
            subprocess.run(["ip", "netns", "del", ns], capture_output=True, timeout=30)
        remove_hosts_files()
        pytest.skip(f"cannot make two network namespaces here: {e}")
    try:
        yield hosts
    finally:
        for ns in made:  # deleting a namespace deletes its end of the veth pair, and so the pair
            subprocess.run(["ip", "netns", "del", ns], capture_output=True, timeout=30)
        remove_hosts_files()


def test_torchrun_across_two_hosts_matches_single_host(two_hosts, config_file, single_run, tmp_path):
    out = tmp_path / "runs"
    first_addr = two_hosts[0][2]
    procs = []
    try:
        for ns, iface, addr, host in two_hosts:
            cmd = ["ip", "netns", "exec", ns, "unshare", "--uts", "sh", "-c", 'hostname "$0" && exec "$@"', host,
                   sys.executable, "-m", "torch.distributed.run", "--nnodes", "2", "--nproc-per-node", "1",
                   "--rdzv-backend", "c10d", "--rdzv-endpoint", f"{first_addr}:{RDZV_PORT}",
                   "--rdzv-id", f"ferlab-{os.getpid()}", "--rdzv-conf", "join_timeout=120", "--local-addr", addr,
                   "-m", "ferlab.cli", "train", str(config_file), f"out_dir={out}", "--no-progress"]
            # gloo picks its interface by the host name unless told: tell it the namespace's only real one
            env = {**os.environ, "OMP_NUM_THREADS": "1", "GLOO_SOCKET_IFNAME": iface}
            procs.append(subprocess.Popen(cmd, cwd=tmp_path, env=env, stdout=subprocess.PIPE,
                                          stderr=subprocess.STDOUT, text=True))
        logs = [p.communicate(timeout=300)[0] for p in procs]
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait(timeout=30)
    for p, log in zip(procs, logs):
        assert p.returncode == 0, log[-3000:]

    assert [d.name for d in out.iterdir()] == ["ddp"]
    run = out / "ddp"
    _assert_same_trajectory(_rows(run), _rows(single_run))
    summary = json.loads((run / "summary.json").read_text())
    single_summary = json.loads((single_run / "summary.json").read_text())
    assert abs(summary["test_accuracy"] - single_summary["test_accuracy"]) <= ONE_FACE
    # one process on each host; rank order is the rendezvous' join order
    assert sorted(summary["hosts"]) == [h for *_, h in two_hosts] and summary["world_size"] == 2
    written = yaml.safe_load((run / "config.yaml").read_text())
    assert (written["world_size"], written["global_batch_size"]) == (2, 2 * PER_RANK_BATCH)
