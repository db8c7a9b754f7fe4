"""`ferlab sweep`: tiny Optuna studies of simple_cnn on real FER2013 faces, stored in SQLite and in a real
PostgreSQL server shared by several worker processes."""
from __future__ import annotations

import csv
import json
import os
import signal
import socket
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path

import optuna
import pytest
import torch
import torch.nn as nn
import yaml

from ferlab import configs
from ferlab.cli import main
from ferlab.engine import load_config
from ferlab.engine.sweep import SweepSpec, load_sweep, open_study, report, run_sweep, trial_config
from ferlab.models import create_model

BASE = dict(model="simple_cnn", input_size=48, in_channels=1, mean=[0.0], std=[1.0], optimizer="adam",
            schedule="constant", warmup_epochs=0, batch_size=8, augment=dict(hflip=0, rotate=0, scale=0,
            translate=0, erase=0), tta=False, threads=1, fraction=0.5, device="cpu")


def _write_sweep(folder: Path, fer_folder: Path, epochs: int, **spec) -> Path:
    (folder / "base.yaml").write_text(yaml.safe_dump({**BASE, "data": str(fer_folder), "epochs": epochs}))
    path = folder / "sweep.yaml"
    path.write_text(yaml.safe_dump({"name": "tiny", "base": "base.yaml", "out_dir": str(folder / "sweeps"), **spec}))
    return path


def _storage(path: Path) -> str:
    return f"sqlite:///{path.parent / 'sweeps' / 'tiny' / 'study.db'}"


def test_two_workers_share_one_sqlite_study(fer_folder, tmp_path, capsys):
    path = _write_sweep(tmp_path, fer_folder, epochs=1, pruner={"type": "none"},
                        space={"lr": {"float": ["1e-4", 3e-3], "log": True},
                               "model_args.dropout": {"float": [0.0, 0.5]}, "batch_size": {"choices": [8, 16]}})
    # the second worker is a separate `ferlab sweep` process on the same study, running alongside this one
    other = subprocess.Popen([sys.executable, "-m", "ferlab.cli", "sweep", str(path), "--trials", "2"], cwd=tmp_path,
                             env={**os.environ, "OMP_NUM_THREADS": "1"}, stdout=subprocess.PIPE,
                             stderr=subprocess.STDOUT, text=True)
    try:
        run_sweep(path, trials=2)
    finally:
        out, _ = other.communicate(timeout=300)
    assert other.returncode == 0, out[-3000:]

    study = optuna.load_study(study_name="tiny", storage=_storage(path))
    trials = study.trials
    assert len(trials) == 4 and {t.number for t in trials} == {0, 1, 2, 3}
    assert all(t.state == optuna.trial.TrialState.COMPLETE for t in trials), [t.state for t in trials]
    workers = {t.user_attrs["worker"].rsplit(":", 1)[1] for t in trials}
    assert workers == {str(os.getpid()), str(other.pid)}
    for t in trials:  # every trial is a normal run folder trained with the sampled values
        run = Path(t.user_attrs["run_dir"])
        assert (run / "summary.json").is_file() and (run / "best.pt").is_file()
        written = yaml.safe_load((run / "config.yaml").read_text())
        assert written["lr"] == pytest.approx(t.params["lr"]) and written["batch_size"] == t.params["batch_size"]
        assert written["model_args"] == {"dropout": pytest.approx(t.params["model_args.dropout"])}
        with (run / "metrics.csv").open() as f:
            rows = list(csv.DictReader(f))
        assert t.value == pytest.approx(max(float(r["val_accuracy"]) for r in rows), abs=1e-4)

    capsys.readouterr()
    folder = tmp_path / "sweeps" / "tiny"
    report(study, load_sweep(path), folder)
    table = capsys.readouterr().out
    assert "4 trials (4 complete, 0 pruned" in table
    best = study.best_trial
    assert f"{best.value:.2f}" in table
    cfg = load_config(folder / "best.yaml")  # ready for `ferlab train`
    assert (cfg.lr, cfg.batch_size, cfg.model_args["dropout"]) == \
        (pytest.approx(best.params["lr"]), best.params["batch_size"], pytest.approx(best.params["model_args.dropout"]))
    assert cfg.epochs == 1 and cfg.fraction == 0.5 and cfg.name == "tiny_best"
    assert (folder / "history.png").stat().st_size > 0 and (folder / "importance.png").stat().st_size > 0


def test_trial_below_threshold_is_pruned_after_warmup(fer_folder, tmp_path, capsys):
    # no accuracy reaches 101%: the pruner must stop the trial at the first epoch after its warm-up
    path = _write_sweep(tmp_path, fer_folder, epochs=3, space={"lr": {"float": [1e-4, 1e-3]}},
                        pruner={"type": "threshold", "lower": 101.0, "n_warmup_steps": 2})
    assert main(["sweep", str(path), "--trials", "1"]) == 0
    out = capsys.readouterr().out
    (trial,) = optuna.load_study(study_name="tiny", storage=_storage(path)).trials
    assert trial.state == optuna.trial.TrialState.PRUNED
    assert sorted(trial.intermediate_values) == [1, 2]
    run = Path(trial.user_attrs["run_dir"])
    with (run / "metrics.csv").open() as f:
        assert [int(r["epoch"]) for r in csv.DictReader(f)] == [1, 2]
    assert not (run / "summary.json").exists()
    assert "no completed trial" in out and not (tmp_path / "sweeps" / "tiny" / "best.yaml").exists()


def test_total_trials_is_the_whole_studys_budget(fer_folder, tmp_path, capsys):
    path = _write_sweep(tmp_path, fer_folder, epochs=1, space={"lr": {"float": [1e-4, 1e-3]}}, total_trials=2,
                        pruner={"type": "none"})
    assert main(["sweep", str(path)]) == 0  # no per-worker cap given: the budget stops it
    assert main(["sweep", str(path), "--trials", "5"]) == 0  # a later worker finds the budget met
    study = optuna.load_study(study_name="tiny", storage=_storage(path))
    assert [t.state for t in study.trials] == [optuna.trial.TrialState.COMPLETE] * 2
    assert main(["sweep", str(path), "--total-trials", "3"]) == 0  # the flag overrides the file
    assert len(optuna.load_study(study_name="tiny", storage=_storage(path)).trials) == 3
    assert "3 trials (3 complete" in capsys.readouterr().out


def test_report_groups_a_sweeps_trials_beside_plain_runs(fer_folder, tmp_path, capsys):
    path = _write_sweep(tmp_path, fer_folder, epochs=2, pruner={"type": "none"}, total_trials=3,
                        space={"lr": {"float": [1e-4, 3e-3], "log": True}})
    assert main(["sweep", str(path)]) == 0
    seed_run = tmp_path / "runs" / "seed_iter1"  # a plain run of the base config, as the seed study's are
    assert main(["train", str(tmp_path / "base.yaml"), "name=seed_iter1", f"out_dir={seed_run.parent}",
                 "--no-progress"]) == 0
    study = optuna.load_study(study_name="tiny", storage=_storage(path))
    best = study.best_trial
    capsys.readouterr()

    plot, md = tmp_path / "report.png", tmp_path / "report.md"
    assert main(["report", str(seed_run), str(tmp_path / "sweeps" / "tiny"), "--plot", str(plot),
                 "--markdown", str(md)]) == 0
    out = capsys.readouterr().out
    tables = [[[c.strip() for c in ln.strip("|").split("|")] for ln in block.splitlines() if ln.startswith("|")]
              for block in out.split("\n\n") if block.startswith("|")]
    main_rows, trial_rows = tables[0][2:], tables[1][2:]
    label = f"tiny best (trial-{best.number:04d})"
    assert [r[0] for r in main_rows] == ["seed_iter1 (fraction 0.5*)", f"{label} (fraction 0.5*)"]  # shrunk splits
    assert main_rows[1][5] == f"{best.value:.2f}"  # the study's best is the report's best
    head = tables[1][0]
    assert head == ["trial", "val acc", "test acc", "epochs", "lr", "hosts"]  # the swept key, not the fixed ones
    assert len(trial_rows) == 3 and trial_rows[0][0] == f"trial-{best.number:04d}"
    assert [float(r[1]) for r in trial_rows] == sorted((float(r[1]) for r in trial_rows), reverse=True)
    for row in trial_rows:
        t = study.trials[int(row[0].split("-")[1])]
        assert row[1] == f"{t.value:.2f}" and row[5] == socket.gethostname()
        assert float(row[4]) == pytest.approx(t.params["lr"], rel=1e-3)
    assert f"(curves: seed_iter1, {label})" in out
    assert plot.stat().st_size > 0 and md.read_text().count("| trial-") == 3


def test_a_sweep_of_ones_own_may_name_a_packaged_base_config(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "vgg_s_cpu48.yaml").write_text("model: resnet_s\n")  # the working folder's: never a sweep's base
    (tmp_path / "sweeps").mkdir()
    own = tmp_path / "sweeps" / "mine.yaml"
    own.write_text(yaml.safe_dump({"base": "vgg_s_cpu48", "space": {"lr": {"float": [1e-3, 1e-1], "log": True}}}))
    assert load_sweep(own).base == configs.CONFIG_DIR / "vgg_s_cpu48.yaml"
    own.write_text(yaml.safe_dump({"base": "vgg_s_cpu_48", "space": {"lr": {"float": [1e-3, 1e-1]}}}))
    with pytest.raises(FileNotFoundError, match=r"base config 'vgg_s_cpu_48' not found .*did you mean 'vgg_s_cpu48'"):
        load_sweep(own)


def test_shipped_regularisation_sweep_sets_enhanced_cnn_v2_dropouts():
    spec = load_sweep("seed_regularisation")  # packaged names, as `ferlab sweep seed_regularisation` reads them
    seed_cfg = load_config("seed/iter5_enhanced_cnn_v2")
    assert spec.base == configs.CONFIG_DIR / "seed" / "iter5_enhanced_cnn_v2.yaml"
    picked = {"lr": 1e-4, "weight_decay": 2e-3, "model_args.dropout.0": 0.2, "model_args.dropout.1": 0.7,
              "model_args.dropout.2": 0.25}
    cfg = trial_config(spec, lambda name, p: picked[name], "t")
    assert (cfg.model, cfg.lr, cfg.weight_decay) == ("enhanced_cnn_v2", 1e-4, 2e-3)
    assert (cfg.batch_size, cfg.epochs, cfg.optimizer) == (seed_cfg.batch_size, seed_cfg.epochs, seed_cfg.optimizer)
    model = create_model(cfg.model, in_channels=1, input_size=48, **cfg.model_args)
    assert [m.p for m in model.modules() if isinstance(m, nn.Dropout)] == [0.2, 0.7, 0.25]
    seed_lr, seed_wd = seed_cfg.lr, seed_cfg.weight_decay  # the search brackets the seed's own values
    assert spec.space["lr"]["low"] < seed_lr < spec.space["lr"]["high"]
    assert spec.space["weight_decay"]["low"] < seed_wd < spec.space["weight_decay"]["high"]
    for p, seed_p in zip(spec.space["model_args.dropout"], (0.35, 0.6, 0.4)):
        assert p["low"] < seed_p < p["high"]


@pytest.mark.parametrize("change, message", [
    ({"trails": 3}, "did you mean 'trials'"),
    ({"space": {"lr": {"float": [1e-2, 1e-3]}}}, "low < high"),
    ({"space": {"lr": [1e-3, 1e-2]}}, "expected"),
    ({"space": {"weight_decy": {"float": [1e-4, 1e-3]}}}, "did you mean 'weight_decay'"),
    ({"pruner": {"type": "hyperband"}}, "median, threshold, none"),
])
def test_bad_sweep_files_name_the_problem(fer_folder, tmp_path, capsys, change, message):
    spec = {"space": {"lr": {"float": [1e-4, 1e-3]}}, **change}
    path = _write_sweep(tmp_path, fer_folder, epochs=1, **spec)
    assert main(["sweep", str(path), "--trials", "1"]) == 2
    assert message in capsys.readouterr().err
    assert not (tmp_path / "sweeps").exists()


def test_unusable_storage_url_is_a_clear_error(fer_folder, tmp_path, capsys):
    path = _write_sweep(tmp_path, fer_folder, epochs=1, space={"lr": {"float": [1e-4, 1e-3]}})
    assert main(["sweep", str(path), "--trials", "1", "--storage", "nosuchdb://host/study"]) == 2
    assert "cannot open storage 'nosuchdb://host/study'" in capsys.readouterr().err


def _open_at_the_barrier(barrier, spec, rounds, results):
    for r in range(rounds):
        barrier.wait()  # every process asks at the same instant, for a study file none has made yet
        try:
            results.put((r, open_study(replace(spec, out_dir=f"{spec.out_dir}/{r}")).study_name))
        except Exception as e:  # reported, not raised: the test names what failed
            results.put((r, f"{type(e).__name__}: {e}"))


def test_workers_started_together_on_a_new_sqlite_study_all_join_it(tmp_path):
    """`ferlab sweep` workers started at once on a new SQLite study race to create Optuna's tables ("table studies
    already exists" failed one of two workers in 3 of 12 tries; 4 at once, in every try): 4 processes x 6 fresh study
    files, all join."""
    import multiprocessing
    spec = SweepSpec(name="tiny", base=tmp_path / "base.yaml", space={}, out_dir=str(tmp_path / "sweeps"))
    procs, rounds = 4, 6
    ctx = multiprocessing.get_context("fork")  # no second import of torch and optuna: the race, not the start-up
    barrier, results = ctx.Barrier(procs), ctx.Queue()
    workers = [ctx.Process(target=_open_at_the_barrier, args=(barrier, spec, rounds, results)) for _ in range(procs)]
    for w in workers:
        w.start()
    got = [results.get(timeout=120) for _ in range(procs * rounds)]
    for w in workers:
        w.join(timeout=30)
    failed = [f"round {r}: {what}" for r, what in got if what != "tiny"]
    assert not failed, failed
    for r in range(rounds):  # one study in each file, joined by all
        assert [s.study_name for s in optuna.get_all_study_summaries(
            f"sqlite:///{tmp_path / 'sweeps' / str(r) / 'tiny' / 'study.db'}")] == ["tiny"]


def test_report_with_one_completed_trial_skips_importance(fer_folder, tmp_path, capsys):
    spec = load_sweep(_write_sweep(tmp_path, fer_folder, epochs=1, space={"lr": {"float": [1e-4, 1e-3]}}))
    study = optuna.create_study(direction="maximize")
    trial = study.ask()
    trial.suggest_float("lr", 1e-4, 1e-3)
    study.tell(trial, 30.0)
    report(study, spec, tmp_path / "out")
    out = capsys.readouterr().out
    assert "importance.png: needs 2 completed trials, have 1; skipped" in out
    assert (tmp_path / "out" / "history.png").is_file() and not (tmp_path / "out" / "importance.png").exists()
    assert load_config(tmp_path / "out" / "best.yaml").lr == pytest.approx(trial.params["lr"])


# ----------------------------------------------------------------------------------------------- PostgreSQL
# Against a real server: the session's throwaway cluster (conftest.postgres), skipped where there is none.

TOTAL = 6       # the study's budget, shared by the workers
HEARTBEAT = 2   # s; a trial silent for 3 beats is stale


def _sweep_cmd(path: Path, *args: str) -> list[str]:
    return [sys.executable, "-m", "ferlab.cli", "sweep", str(path), *args]


def _worker_env() -> dict:
    return {**os.environ, "OMP_NUM_THREADS": "1"}


def _wait_for(what: str, check, procs, timeout: float = 180.0, every: float = 0.2):
    """Poll `check()` until it returns something truthy; fail if a worker exits first or after `timeout` s."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found = check()
        if found:
            return found
        for p in procs:
            if p.poll() is not None:
                pytest.fail(f"worker {p.pid} exited ({p.returncode}) before {what}: {p.stdout.read()[-3000:]}")
        time.sleep(every)
    pytest.fail(f"no {what} within {timeout:.0f} s")


def test_three_workers_share_a_postgres_study_and_survive_a_killed_worker(postgres, fer_folder, tmp_path):
    path = _write_sweep(tmp_path, fer_folder, epochs=2, pruner={"type": "none"},
                        space={"lr": {"float": ["1e-4", 3e-3], "log": True},
                               "model_args.dropout": {"float": [0.0, 0.5]}})
    url = postgres["url"]
    args = ["--storage", url, "--total-trials", str(TOTAL), "--heartbeat", str(HEARTBEAT)]
    # started together on an empty database: they also race to create Optuna's tables
    workers = [subprocess.Popen(_sweep_cmd(path, *args), cwd=tmp_path, env=_worker_env(), stdout=subprocess.PIPE,
                                stderr=subprocess.STDOUT, text=True) for _ in range(3)]
    victim, survivors = workers[0], workers[1:]
    try:
        def victims_running_trial():
            try:
                study = optuna.load_study(study_name="tiny", storage=url)
            except KeyError:  # not created yet
                return None
            running = study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.RUNNING,))
            mine = [t for t in running if t.user_attrs.get("worker", "").endswith(f":{victim.pid}")]
            return mine[0] if mine else None

        killed = _wait_for("a running trial of the victim", victims_running_trial, workers)
        os.kill(victim.pid, signal.SIGKILL)  # mid-trial: no chance to tell the study anything
        victim.wait(timeout=30)

        # the study as it stands, read while the other workers run
        rep = subprocess.run(_sweep_cmd(path, "--storage", url, "--report"), cwd=tmp_path, env=_worker_env(),
                             capture_output=True, text=True, timeout=180)
        assert rep.returncode == 0, rep.stdout[-2000:] + rep.stderr[-2000:]
        assert rep.stdout.startswith("study tiny: ") and " running)" in rep.stdout.splitlines()[0], rep.stdout

        for p in survivors:
            out, _ = p.communicate(timeout=600)
            assert p.returncode == 0, out[-3000:]
    finally:
        for p in workers:
            if p.poll() is None:
                p.kill()
                p.wait(timeout=30)

    study = optuna.load_study(study_name="tiny", storage=url)
    states = optuna.trial.TrialState
    by_number = {t.number: t for t in study.trials}
    assert by_number[killed.number].state == states.FAIL  # its heartbeat stopped: a survivor marked it
    assert not (Path(killed.user_attrs["run_dir"]) / "summary.json").exists()
    done = [t for t in study.trials if t.state == states.COMPLETE]
    assert len(done) == TOTAL, [(t.number, t.state.name) for t in study.trials]
    assert [t.state for t in study.trials].count(states.FAIL) == 1
    assert len(study.trials) == TOTAL + 1  # the budget was met exactly, with one trial to replace the dead one
    # none ran twice: distinct parameters, each completed trial in its own run folder, trained once
    assert len({tuple(sorted(t.params.items())) for t in done}) == TOTAL
    assert len({t.user_attrs["run_dir"] for t in done}) == TOTAL
    survivor_pids = {str(p.pid) for p in survivors}
    for t in done:
        run = Path(t.user_attrs["run_dir"])
        with (run / "metrics.csv").open() as f:
            assert [int(r["epoch"]) for r in csv.DictReader(f)] == [1, 2]
        s = json.loads((run / "summary.json").read_text())
        assert s["val_accuracy"] == pytest.approx(t.value)
        assert (s["hosts"], s["world_size"], s["torch"]) == ([socket.gethostname()], 1, torch.__version__)
    assert {t.user_attrs["worker"].rsplit(":", 1)[1] for t in done if t.number > killed.number} <= survivor_pids


def _one_error_line(proc: subprocess.CompletedProcess) -> str:
    lines = proc.stderr.strip().splitlines()
    assert proc.returncode == 2 and len(lines) == 1, (proc.returncode, proc.stderr)
    return lines[0]


def test_wrong_postgres_password_or_host_is_one_clear_line(postgres, fer_folder, tmp_path, capsys):
    path = _write_sweep(tmp_path, fer_folder, epochs=1, space={"lr": {"float": [1e-4, 1e-3]}})
    port, db = postgres["port"], postgres["db"]
    closed = socket.socket()
    closed.bind(("127.0.0.1", 0))  # a port that is bound but not listening: connection refused
    try:
        bad = {"password": f"postgresql://{postgres['user']}:wrong-pw@127.0.0.1:{port}/{db}",
               "host": f"postgresql://{postgres['user']}:wrong-pw@127.0.0.1:{closed.getsockname()[1]}/{db}"}
        procs = {k: subprocess.Popen(_sweep_cmd(path, "--trials", "1", "--storage", url), cwd=tmp_path,
                                     env=_worker_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
                 for k, url in bad.items()}
        done = {}
        for k, p in procs.items():
            out, err = p.communicate(timeout=120)
            done[k] = subprocess.CompletedProcess(p.args, p.returncode, out, err)
    finally:
        closed.close()
    line = _one_error_line(done["password"])
    assert line.startswith(f"ferlab sweep: error: cannot open storage 'postgresql://ferlab:***@127.0.0.1:{port}/{db}'")
    assert 'password authentication failed for user "ferlab"' in line and "Expected a reachable database URL" in line
    line = _one_error_line(done["host"])
    assert "Connection refused" in line and "Expected a reachable database URL" in line
    assert "wrong-pw" not in done["password"].stderr + done["host"].stderr  # a password is never echoed
    assert not (tmp_path / "sweeps" / "tiny" / "trials").exists()

    # --report names the studies the database does hold
    assert main(["sweep", str(path), "--storage", postgres["url"], "--study", "nosuch", "--report"]) == 2
    assert "no study 'nosuch' in postgresql://ferlab:***@127.0.0.1" in capsys.readouterr().err
