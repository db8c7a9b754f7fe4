"""Hyper-parameter sweeps with Optuna: a search space in YAML, every trial a normal ferlab run folder.

A sweep YAML names a base training config, fixed overrides, and a space over config keys (dotted keys
reach nested ones: augment.rotate, model_args.dropout). TPE samples the trials, a pruner stops bad ones
from their validation accuracy after each epoch, and the study lives in SQLite in the sweep folder or in
any database Optuna supports, so workers on several machines can share one study. Trials are chosen on
validation accuracy only; the test split is never consulted.

Many workers, one study (PostgreSQL): every worker runs `ferlab sweep SWEEP.yaml --storage URL`. With a
study-wide budget (`total_trials`, --total-trials) each worker keeps starting trials until the study holds that
many finished ones. Each running trial sends a heartbeat (--heartbeat S); a trial whose worker died (killed,
machine lost) misses three beats, the next worker to look marks it FAIL, and the budget is met by a new trial.

    name: seed_regularisation            # study name and folder: <out_dir>/<name>
    base: ../seed/iter5_enhanced_cnn_v2.yaml   # relative to this file, else a packaged config name
    fixed: {epochs: 15}                  # overrides applied to every trial
    space:
      lr: {float: [1.0e-5, 2.0e-4], log: true}
      batch_size: {choices: [32, 64]}
      model_args.dropout: [{float: [0.2, 0.5]}, {float: [0.4, 0.7]}, 0.4]   # a list: one parameter each
    trials: 20                           # per worker; --trials overrides
    total_trials: 60                     # optional: the study's budget over all workers; --total-trials overrides
    pruner: {type: median, n_startup_trials: 5, n_warmup_steps: 3}
"""
from __future__ import annotations

import difflib
import os
import random
import re
import socket
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import torch
import yaml

from .._atomic import replacing
from .._optional import need
from ..configs import not_found, packaged, resolve
from .config import TrainConfig, load_config, read_yaml_mapping
from .trainer import fit

optuna = need("optuna", "sweep", "ferlab sweep")
import sqlalchemy  # noqa: E402  (optuna's own dependency: there when optuna is)

SPEC_KEYS = ("name", "base", "fixed", "space", "trials", "total_trials", "timeout", "out_dir", "sampler", "pruner")
KINDS = ("float", "int", "choices")
PRUNERS = ("median", "threshold", "none")


@dataclass
class SweepSpec:
    name: str
    base: Path
    space: dict                      # config key -> parameter, or a list of parameters / constants
    fixed: dict = field(default_factory=dict)
    trials: int | None = None        # per worker; None: 20, or no cap when total_trials is set
    total_trials: int | None = None  # finished trials the study needs, over all workers
    timeout: float | None = None
    out_dir: str = "runs/sweeps"
    sampler: dict = field(default_factory=dict)   # TPE: seed, n_startup_trials
    pruner: dict = field(default_factory=lambda: {"type": "median"})


def _param(key: str, p) -> dict:
    """Check one parameter declaration: {float: [lo, hi], log?, step?} | {int: [lo, hi], ...} | {choices: [...]}."""
    form = "{float: [low, high]}, {int: [low, high]} or {choices: [a, b, ...]} (optional log: true, step: x)"
    if not isinstance(p, dict):
        raise ValueError(f"space.{key}: expected {form}, got {p!r}")
    kinds = [k for k in KINDS if k in p]
    extra = set(p) - set(KINDS) - {"log", "step"}
    if len(kinds) != 1 or extra:
        raise ValueError(f"space.{key}: expected {form}, got {p!r}")
    kind = kinds[0]
    if kind == "choices":
        if not isinstance(p["choices"], list) or not p["choices"]:
            raise ValueError(f"space.{key}.choices: expected a non-empty list, got {p['choices']!r}")
        return {"kind": kind, "choices": p["choices"]}
    bounds = p[kind]
    if not isinstance(bounds, list) or len(bounds) != 2:
        raise ValueError(f"space.{key}.{kind}: expected [low, high], got {bounds!r}")
    cast = float if kind == "float" else int
    try:  # YAML 1.1 reads 1e-5 (no dot) as a string
        low, high = cast(float(bounds[0])), cast(float(bounds[1]))
        step = None if p.get("step") is None else cast(float(p["step"]))
    except (TypeError, ValueError):
        raise ValueError(f"space.{key}.{kind}: expected numbers, got {bounds!r} step {p.get('step')!r}") from None
    log = bool(p.get("log", False))
    if not low < high or (log and low <= 0) or (log and step is not None):
        raise ValueError(f"space.{key}: need low < high, low > 0 for log, and no step with log; got {p!r}")
    return {"kind": kind, "low": low, "high": high, "log": log, "step": step}


def load_sweep(path: str | Path) -> SweepSpec:
    """Read and check a sweep YAML (a file, or a packaged sweep's name: "seed_regularisation"); `base` is a
    file relative to the sweep file, else a packaged config's name."""
    path = resolve(path, "sweep")
    values = read_yaml_mapping(path, "sweep")
    for k in values:
        if k not in SPEC_KEYS:
            close = difflib.get_close_matches(k, SPEC_KEYS, n=1)
            hint = f"; did you mean {close[0]!r}?" if close else "."
            raise ValueError(f"{path}: unknown sweep key {k!r}{hint} Valid keys: {', '.join(SPEC_KEYS)}")
    for k in ("base", "space"):
        if k not in values:
            raise ValueError(f"{path}: missing {k!r} (the base training config and the search space)")
    if not isinstance(values["space"], dict) or not values["space"]:
        raise ValueError(f"{path}: space must map config keys to parameters, got {values['space']!r}")
    space = {}
    for key, p in values["space"].items():
        if isinstance(p, list):  # a list-valued key: each element a parameter or a constant
            if not any(isinstance(e, dict) for e in p):
                raise ValueError(f"space.{key}: expected a parameter, got the constant list {p!r}; to choose "
                                 f"among values write {{choices: {p!r}}}")
            space[key] = [_param(f"{key}.{i}", e) if isinstance(e, dict) else e for i, e in enumerate(p)]
        else:
            space[key] = _param(key, p)
    base = Path(os.path.normpath(path.parent / values["base"]))
    if not base.is_file():  # not beside the sweep file: a packaged config's name (never the working folder's)
        base = packaged(str(values["base"]), "config")
        if base is None:
            raise FileNotFoundError(f"{path}: base config {values['base']!r} not found (looked for "
                                    f"{os.path.normpath(path.parent / values['base'])}); "
                                    f"{not_found(values['base'], 'config')}")
    pruner = {"type": "median", **(values.get("pruner") or {})}
    if pruner["type"] not in PRUNERS:
        raise ValueError(f"{path}: pruner.type {pruner['type']!r} is not one of {', '.join(PRUNERS)}")
    spec = SweepSpec(name=values.get("name") or path.stem, base=base, space=space, fixed=values.get("fixed") or {},
                     trials=None if values.get("trials") is None else int(values["trials"]),
                     total_trials=None if values.get("total_trials") is None else int(values["total_trials"]),
                     timeout=None if values.get("timeout") is None else float(values["timeout"]),
                     out_dir=values.get("out_dir", "runs/sweeps"), sampler=values.get("sampler") or {},
                     pruner=pruner)
    trial_config(spec, _pick_first, name="check", out_dir=".")  # unknown keys fail now, not in trial 0
    return spec


def _pick_first(name: str, p: dict):
    return p["choices"][0] if p["kind"] == "choices" else p["low"]


def _suggest(trial: optuna.Trial):
    def pick(name: str, p: dict):
        if p["kind"] == "float":
            return trial.suggest_float(name, p["low"], p["high"], log=p["log"], step=p["step"])
        if p["kind"] == "int":
            return trial.suggest_int(name, p["low"], p["high"], log=p["log"], step=p["step"] or 1)
        return trial.suggest_categorical(name, p["choices"])
    return pick


def trial_values(spec: SweepSpec, pick) -> dict:
    """Config key -> value, one `pick(param_name, param)` per parameter (param_name is key or key.i)."""
    out = {}
    for key, p in spec.space.items():
        if isinstance(p, list):
            out[key] = [pick(f"{key}.{i}", e) if isinstance(e, dict) else e for i, e in enumerate(p)]
        else:
            out[key] = pick(key, p)
    return out


def _yaml_text(value) -> str:
    # load_config parses override text as YAML: dump so that 1e-05 comes back a float, not a string
    return yaml.safe_dump(value, default_flow_style=True, width=1 << 20).removesuffix("...\n").strip()


def trial_config(spec: SweepSpec, pick, name: str, out_dir: str | Path | None = None,
                 overrides: list[str] | None = None) -> TrainConfig:
    """The base config <- fixed <- sampled values <- `overrides` (key=value, e.g. from --data)."""
    items = [f"{k}={_yaml_text(v)}" for k, v in {**spec.fixed, **trial_values(spec, pick)}.items()]
    items.append(f"name={name}")
    if out_dir is not None:
        items.append(f"out_dir={out_dir}")
    return load_config(spec.base, items + list(overrides or []))


HEARTBEAT_S = 60       # a running trial's heartbeat; three missed beats and another worker marks it FAIL
CONNECT_TIMEOUT_S = 10  # an unreachable database host fails a worker in this long, not after TCP's minutes


def _hide_password(url: str) -> str:
    return re.sub(r"(://[^/:@]*:)[^@/]*@", r"\1***@", url)


def _one_line(e: BaseException) -> str:
    """The database's own reason, on one line (SQLAlchemy appends the SQL and a help link on further lines)."""
    text = str(getattr(e, "orig", None) or e)
    return " ".join(text.split()).rstrip(".")


def open_storage(url: str, heartbeat: float = HEARTBEAT_S) -> optuna.storages.RDBStorage:
    """An Optuna RDB storage with heartbeats, or a ValueError in one line that says what was expected."""
    engine = None
    if url.startswith("sqlite"):  # several workers on one SQLite file: wait for the lock instead of failing
        engine = {"connect_args": {"timeout": 60}}
    elif url.startswith("postgresql"):  # pre-ping: a worker outlives connections the server or a NAT dropped
        engine = {"connect_args": {"connect_timeout": CONNECT_TIMEOUT_S}, "pool_pre_ping": True}
    for attempt in range(6):
        try:
            # heartbeats: a trial whose worker died (machine lost, killed) is marked failed instead of running forever
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
                beat = max(1, round(heartbeat))
                return optuna.storages.RDBStorage(url, engine_kwargs=engine, heartbeat_interval=beat,
                                                  grace_period=3 * beat)
        except (sqlalchemy.exc.IntegrityError, sqlalchemy.exc.ProgrammingError, sqlalchemy.exc.OperationalError) as e:
            # workers started together on a new database race to create Optuna's tables and types (PostgreSQL:
            # "duplicate key ... pg_type", SQLite: "table studies already exists"): the losers find them made when
            # they try again, a little apart (random: not all at once again). Any other operational error (no such
            # host, a file that cannot be opened) is final
            error = e
            if isinstance(e, sqlalchemy.exc.OperationalError) and "already exists" not in str(e.orig):
                break
            time.sleep(random.uniform(0.1, 0.3) * (attempt + 1))
        except (ImportError, sqlalchemy.exc.SQLAlchemyError) as e:
            error = e
            break
    raise ValueError(f"cannot open storage {_hide_password(url)!r}: {_one_line(error)}. Expected a reachable "
                     "database URL such as sqlite:///study.db or postgresql://user:password@host:5432/db (with "
                     "its driver installed: pip install 'ferlab[sweep]')")


def open_study(spec: SweepSpec, storage: str | None = None, study_name: str | None = None,
               heartbeat: float = HEARTBEAT_S, create: bool = True) -> optuna.Study:
    """Create or join the study (only join when not `create`): SQLite in the sweep folder by default, else any
    Optuna storage URL."""
    study_name = study_name or spec.name
    if storage is None:
        folder = Path(spec.out_dir) / study_name
        folder.mkdir(parents=True, exist_ok=True)
        storage = f"sqlite:///{(folder / 'study.db').resolve()}"
    url, storage = storage, open_storage(storage, heartbeat)
    if not create:
        names = [s.study_name for s in storage.get_all_studies()]
        if study_name not in names:
            raise ValueError(f"no study {study_name!r} in {_hide_password(url)}; it holds "
                             f"{', '.join(map(repr, names)) or 'no study'} (start one with ferlab sweep, or pass --study)")
    with warnings.catch_warnings():  # constant_liar: parallel workers do not all pick the same promising point
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        sampler = optuna.samplers.TPESampler(seed=spec.sampler.get("seed"), constant_liar=True,
                                             n_startup_trials=int(spec.sampler.get("n_startup_trials", 10)))
    kind, args = spec.pruner["type"], {k: v for k, v in spec.pruner.items() if k != "type"}
    cls = {"median": optuna.pruners.MedianPruner, "threshold": optuna.pruners.ThresholdPruner,
           "none": optuna.pruners.NopPruner}[kind]
    try:
        pruner = cls(**args)
    except TypeError as e:
        raise ValueError(f"pruner {kind!r}: bad arguments {args} ({e}); see optuna.pruners.{cls.__name__}") from None
    return optuna.create_study(storage=storage, study_name=study_name, direction="maximize", sampler=sampler,
                               pruner=pruner, load_if_exists=True)


def run_sweep(path: str | Path, trials: int | None = None, timeout: float | None = None, storage: str | None = None,
              study_name: str | None = None, overrides: list[str] | None = None, total_trials: int | None = None,
              heartbeat: float = HEARTBEAT_S, report_only: bool = False) -> optuna.Study:
    """Run trials of the sweep in this process (joining the study if it exists), then report.

    This worker stops after `trials` trials of its own, after `timeout` seconds, or when the study holds
    `total_trials` finished trials over all workers, whichever comes first. `report_only`: run nothing, report
    the study as it stands (also while other workers run)."""
    spec = load_sweep(path)
    if overrides:
        trial_config(spec, _pick_first, "check", ".", overrides)  # a bad override fails before trial 0 exists
    study = open_study(spec, storage, study_name, heartbeat, create=not report_only)
    folder = Path(spec.out_dir) / study.study_name
    if report_only:
        report(study, spec, folder, overrides)
        return study
    worker = f"{socket.gethostname()}:{os.getpid()}"
    total = total_trials if total_trials is not None else spec.total_trials
    if total is not None and total < 1:
        raise ValueError(f"total_trials must be at least 1, got {total}")
    cap = trials if trials is not None else spec.trials
    if cap is None and total is None:
        cap = 20
    timeout = timeout if timeout is not None else spec.timeout
    deadline = None if timeout is None else time.monotonic() + timeout

    def objective(trial: optuna.Trial) -> float:
        run_dir = folder / "trials" / f"trial-{trial.number:04d}"  # numbers are unique across workers
        cfg = trial_config(spec, _suggest(trial), run_dir.name, run_dir.parent, overrides)
        trial.set_user_attr("run_dir", str(run_dir.resolve()))
        trial.set_user_attr("worker", worker)

        def hook(epoch: int, metrics: dict):
            trial.report(metrics["val_accuracy"], epoch)
            if trial.should_prune():
                raise optuna.TrialPruned(f"val accuracy {metrics['val_accuracy']:.2f}% at epoch {epoch}")

        summary = fit(cfg, progress=False, run_dir=run_dir, epoch_hook=hook)
        trial.set_user_attr("best_epoch", summary["best_epoch"])
        return summary["val_accuracy"]

    ran = 0
    while cap is None or ran < cap:
        if deadline is not None and time.monotonic() >= deadline:
            break
        if total is not None and _budget_met(study, total, min(heartbeat, 10.0), deadline):
            break
        # one trial per call: the budget is checked before each. A diverged trial (NaN loss) or one too big for
        # the GPU is recorded as failed and the sweep goes on
        study.optimize(objective, n_trials=1, catch=(FloatingPointError, torch.cuda.OutOfMemoryError))
        ran += 1
    report(study, spec, folder, overrides)
    return study


def _budget_met(study: optuna.Study, total: int, poll: float, deadline: float | None) -> bool:
    """Whether the study holds `total` finished (complete or pruned) trials, over all workers.

    Running trials count as on their way, so N workers do not overshoot the budget. While finished plus
    running trials would meet it, wait (every `poll` s) until they finish or, where their worker died, go stale
    and are marked FAIL (three missed heartbeats): then a new trial replaces the dead one.
    """
    states = optuna.trial.TrialState
    while True:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            optuna.storages.fail_stale_trials(study)
        live = study.get_trials(deepcopy=False, states=(states.COMPLETE, states.PRUNED, states.RUNNING))
        finished = sum(t.state != states.RUNNING for t in live)
        if finished >= total:
            return True
        if len(live) < total:
            return False
        if deadline is not None and time.monotonic() >= deadline:
            return True
        time.sleep(poll)


def best_table(study: optuna.Study, top: int = 5) -> str:
    """The best completed trials by validation accuracy, as a text table."""
    states = optuna.trial.TrialState
    done = sorted((t for t in study.trials if t.state == states.COMPLETE), key=lambda t: t.value, reverse=True)
    counts = {s.name.lower(): sum(t.state == s for t in study.trials)
              for s in (states.COMPLETE, states.PRUNED, states.FAIL, states.RUNNING)}
    lines = [f"study {study.study_name}: {len(study.trials)} trials ("
             + ", ".join(f"{n} {s}" for s, n in counts.items()) + ")"]
    if not done:
        return "\n".join(lines + ["no completed trial yet"])
    names = sorted({k for t in done for k in t.params})
    head = ["trial", "val_acc", "epoch", *names, "run"]
    rows = [[str(t.number), f"{t.value:.2f}", str(t.user_attrs.get("best_epoch", "")),
             *[_fmt(t.params.get(n)) for n in names], Path(t.user_attrs.get("run_dir", "")).name]
            for t in done[:top]]
    widths = [max(len(r[i]) for r in [head, *rows]) for i in range(len(head))]
    lines += ["  ".join(c.rjust(w) for c, w in zip(r, widths)) for r in [head, *rows]]
    return "\n".join(lines)


def _fmt(v) -> str:
    return f"{v:.4g}" if isinstance(v, float) else str(v)


def report(study: optuna.Study, spec: SweepSpec, folder: Path, overrides: list[str] | None = None) -> None:
    """Print the best trials, write best.yaml (ready for `ferlab train`) and the Optuna plots into `folder`."""
    import matplotlib.pyplot as plt
    from optuna.visualization import matplotlib as ovm

    folder.mkdir(parents=True, exist_ok=True)
    print(best_table(study), flush=True)
    done = [t for t in study.trials if t.state == optuna.trial.TrialState.COMPLETE]
    if not done:
        print(f"no completed trial: no best.yaml or plots written to {folder}", flush=True)
        return
    best = study.best_trial
    cfg = trial_config(spec, lambda name, p: best.params[name], f"{study.study_name}_best", overrides=overrides)
    header = (f"# Best trial of study {study.study_name!r}: trial {best.number}, validation accuracy "
              f"{best.value:.2f}% at epoch {best.user_attrs.get('best_epoch')}\n# run: {best.user_attrs.get('run_dir')}"
              f"\n# train it: ferlab train {folder / 'best.yaml'}\n")
    # workers sharing a study may share the folder too: each file appears whole (write, then rename)
    with replacing(folder / "best.yaml") as tmp:
        tmp.write_text(header + yaml.safe_dump(cfg.to_dict(), sort_keys=False))
    # importance is fitted over completed trials: it needs at least two
    plots = [("history.png", ovm.plot_optimization_history, 1), ("importance.png", ovm.plot_param_importances, 2)]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        for name, plot, needed in plots:
            if len(done) < needed:
                print(f"{name}: needs {needed} completed trials, have {len(done)}; skipped", flush=True)
                continue
            try:
                ax = plot(study)
            except ImportError as e:  # older Optuna's default importance evaluator needs scikit-learn
                print(f"{name}: skipped ({e})", flush=True)
                continue
            with replacing(folder / name) as tmp:
                ax.figure.savefig(tmp, format="png", dpi=110, bbox_inches="tight")
            plt.close(ax.figure)
    print(f"best config: {folder / 'best.yaml'}; plots in {folder}", flush=True)
