"""`ferlab` command: verbs only. Each parses its arguments and calls the function the Python API exposes."""
from __future__ import annotations

import argparse
import difflib
import io
import os
import sys

# OpenCV's and FFmpeg's own log lines ("[ WARN:0@0.1] ...", "[mov,mp4,... @ 0x...] moov atom not found") would reach
# the user beside ferlab's one line per unreadable input: quieted before anything imports cv2 (a user's setting wins)
os.environ.setdefault("OPENCV_LOG_LEVEL", "ERROR")
os.environ.setdefault("OPENCV_FFMPEG_LOGLEVEL", "-8")  # AV_LOG_QUIET

# ferlab.inference.detect's names and aliases, spelled out so that building the parser imports no torch
DETECTOR_CHOICES = ("mtcnn", "haar", "cascade", "lbp", "none")


def _cmd_data(a):
    from .data import load_fer2013
    data = load_fer2013(a.path, skip_bad=a.skip_bad, cache=not a.no_cache)
    print(data.summary())
    if a.stats:
        from .data import make_splits
        from .data.ferplus import vote_report
        from .data.stats import split_stats
        splits = make_splits(data, a.split)
        print("\n" + split_stats(splits))
        print("\n" + vote_report(splits, data.votes_source))
    if data.skipped:
        print(f"\n{len(data.skipped)} bad rows skipped, first few:", *data.skipped[:5], sep="\n  ")


def _overrides(a) -> list[str]:
    """key=value overrides, with --data and --device folded in (they win over the config file)."""
    return list(a.overrides) + [f"{k}={v}" for k, v in (("data", a.data), ("device", a.device)) if v]


def _cmd_train(a):
    from .engine import fit, load_config
    if a.config and "=" in a.config and not a.config.endswith((".yaml", ".yml")):
        a.overrides = [a.config, *a.overrides]  # no config file: the defaults plus key=value overrides
        a.config = None
    if a.resume:  # the run's own config; only where and how fast it runs may change (config.RESUME_KEYS)
        if a.config:
            raise ValueError(f"give a config or --resume RUN_DIR, not both: a resumed run keeps the config it was "
                             f"started with ({a.resume}/config.yaml)")
        fit(None, resume=a.resume, wandb_project=a.wandb_project if a.wandb else None, progress=_progress(a),
            resume_overrides=_overrides(a))
        return
    cfg = load_config(a.config, _overrides(a))
    fit(cfg, wandb_project=a.wandb_project if a.wandb else None, progress=_progress(a))


def _cmd_configs(a):
    from textwrap import shorten

    from . import configs
    if a.name:  # the file itself, to read or to copy and edit: ferlab configs vgg_s_cpu48 > mine.yaml
        found = configs.packaged(a.name, "config") or configs.packaged(a.name, "sweep")
        if found is None:
            raise configs.not_found(a.name, "config")
        print(found.read_text(), end="")
        return
    for kind, title in (("config", "training configs: ferlab train NAME"), ("sweep", "sweeps: ferlab sweep NAME")):
        found = configs.names(kind)
        width = max(map(len, found))
        print(f"{title}" if kind == "config" else f"\n{title}")
        for name in found:
            print(f"  {name:<{width}}  {shorten(configs.describe(configs.packaged(name, kind)), 100 - width)}")
    print(f"\n(in {configs.CONFIG_DIR}; a path to a YAML file of your own works wherever a name does)")


def _cmd_sweep(a):
    from .engine.sweep import run_sweep
    run_sweep(a.sweep, trials=a.trials, timeout=a.timeout, storage=a.storage, study_name=a.study,
              overrides=_overrides(a), total_trials=a.total_trials, heartbeat=a.heartbeat, report_only=a.report)


def _port_free(host: str, port: int) -> None:
    """Bind host:port once, as the server will (SO_REUSEADDR, as uvicorn), so that a port already taken is one line
    before the model loads, not a traceback after."""
    import errno
    import socket
    try:
        family, kind, proto, _, addr = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM,
                                                          flags=socket.AI_PASSIVE)[0]
    except (socket.gaierror, UnicodeError, OverflowError) as e:
        raise ValueError(f"cannot listen on {host}:{port}: {getattr(e, 'strerror', None) or e}") from None
    with socket.socket(family, kind, proto) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind(addr)
        except OSError as e:
            if e.errno == errno.EADDRINUSE:
                raise RuntimeError(f"{host}:{port} is already in use (another server is listening there); stop it "
                                   "or pass another --port") from None
            raise RuntimeError(f"cannot listen on {host}:{port} ({e.strerror or e})") from None


def _cmd_serve(a):
    _port_free(a.host, a.port)
    from .weights import resolve_model
    resolve_model(a.model)  # a mistyped name is one line now, not an error of the worker process
    from ._optional import need
    from .serve.app import MAX_PIXELS, create_app  # checks the rest of the 'serve' extra first
    need("uvicorn", "serve", "ferlab serve")
    need("wsproto", "serve", "ferlab serve")  # the live mode's WebSocket
    from .serve.live import LiveLimits
    from .serve.server import serve
    # Inference leaves one core to the event loop, or /health waits for the scheduler behind busy workers
    # (measured on 2 cores: /health p99 12-47 ms with both cores computing, 3 ms with one). With --pin (the
    # default) the server process runs on that core alone and the workers on the others: unpinned, the kernel
    # work of the worker's big page mappings (20-40% system CPU with detector none) still stalled the event
    # loop now and then (worst /health probe 51-133 ms in 4 of 5 runs; pinned 3-29 ms in 7 of 7).
    cpus = sorted(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else []
    cores = len(cpus) or os.cpu_count() or 1
    pin = a.pin and len(cpus) >= 2
    # the model is loaded in the inference worker process(es) before create_app returns; this one holds no torch
    app = create_app(model=a.model, detector=a.detector, device=a.device, max_bytes=round(a.max_mb * 2**20),
                     max_pixels=MAX_PIXELS if a.max_pixels is None else a.max_pixels, workers=a.workers,
                     max_video_bytes=round(a.max_video_mb * 2**20), max_video_frames=a.max_video_frames,
                     threads=max(1, cores - 1) if a.threads is None else a.threads,
                     worker_cpus=set(cpus[1:]) if pin else None, photo_budget_s=a.photo_timeout,
                     video_budget_s=a.video_timeout, max_active=a.max_queue, allow_hosts=tuple(a.allow_host),
                     allow_origins=tuple(a.allow_origin), live_sessions=a.live_sessions)
    if pin:
        os.sched_setaffinity(0, {cpus[0]})
    # The heap now holds the web stack: thousands of long-lived objects that every full garbage collection
    # would walk with the GIL held (47-120 ms pauses of /health measured under load, when torch and the model
    # were in this process). Freezing them leaves the collector only what requests create.
    import gc
    gc.collect()
    gc.freeze()
    print(f"ferlab serve: web page at http://{a.host}:{a.port}/  API docs at http://{a.host}:{a.port}/docs")
    serve(app, a.host, a.port, request_timeout_s=a.request_timeout, max_connections=a.max_connections,
          ws_max_bytes=LiveLimits().max_bytes)


def _cmd_eval(a):
    from pathlib import Path

    from .engine.evaluation import evaluate_checkpoints, write_plots
    from .engine.metrics import format_report
    res = evaluate_checkpoints(a.runs, a.split, a.data, tta=not a.no_tta, device=a.device,
                               tencrop=a.ten_crop)
    what = a.runs[0] if len(a.runs) == 1 else f"ensemble of {len(a.runs)} models"
    print(f"{what} on {res['split']} ({res['protocol']} split, {res['n']} faces), scored against the "
          f"{res['scored_against']}\n")
    print("plain:\n" + format_report(res["plain"]))
    if "tta" in res:
        print("\nhorizontal-flip TTA:\n" + format_report(res["tta"]))
    if "tencrop" in res:
        print("\nten-crop TTA (centre + 4 corners of the face padded by 6%, each mirrored):\n"
              + format_report(res["tencrop"]))
    crowd = {key: res[key]["crowd"] for key in ("plain", "tta", "tencrop") if "crowd" in res.get(key, {})}
    if crowd:
        from .engine.crowd import format_crowd
        names = {"plain": "model (plain)", "tta": "model (flip TTA)", "tencrop": "model (ten-crop TTA)"}
        rows = {names[k]: c["model"] for k, c in crowd.items()} | {"uniform": next(iter(crowd.values()))["uniform"]}
        print("\n" + format_crowd(rows, next(iter(crowd.values()))["faces"]))
    if not a.out:  # never into the current folder or over a run's own plots unless asked
        print("\n(--out FILE.png draws the confusion matrix there and the reliability diagram beside it)")
        return
    confusion, rel = write_plots(res, Path(a.out))
    print(f"\nconfusion matrix: {confusion}\nreliability diagram: {rel}")


def _cmd_calibrate(a):
    from .engine.calibration import calibrate_run
    min_recall = {}
    for item in a.min_recall:
        name, _, pct = item.partition("=")
        try:
            min_recall[name.strip()] = float(pct)
        except ValueError:
            raise ValueError(f"--min-recall {item!r}: expected CLASS=PERCENT, e.g. disgust=45") from None
    path, ckpt = calibrate_run(a.checkpoint, a.data, a.device, a.tta, min_recall)
    r = ckpt["calibration"]
    if min_recall:
        names = list(ckpt["classes"])
        print(f"logit adjustment tau {r['logit_adjustment_tau']:.2f} (training prior), validation recall: " +
              ", ".join(f"{c} {r['val_recall_before'][names.index(c)]:.1f} -> {r['val_recall_after'][names.index(c)]:.1f}%"
                        for c in min_recall))
    print(f"{path}: temperature {r['temperature']:.3f}, fitted on the validation split ({r['faces']} faces, "
          f"TTA {r['tta']}): NLL {r['nll_before']:.4f} -> {r['nll_after']:.4f}, "
          f"ECE {r['ece_before']:.2f}% -> {r['ece_after']:.2f}%")


def _cmd_interpolate(a):
    from .engine.interpolate import interpolate_runs
    path = interpolate_runs(a.first, a.second, a.alpha, a.out)
    print(f"{path}: {1 - a.alpha:g} x {a.first} + {a.alpha:g} x {a.second}; no temperature yet: "
          f"ferlab calibrate {a.out}")


def _cmd_report(a):
    from pathlib import Path

    from .engine.report import best_label, find_runs, report_plot, report_table, sweep_table
    runs, sweeps = find_runs(a.runs)
    # each sweep's best trial stands beside the runs; its own table lists every trial
    runs, labels = runs + [s.best for s in sweeps], [r.name for r in runs] + [best_label(s) for s in sweeps]
    text = "\n\n".join([report_table(runs, labels)] + [
        f"sweep {s.name} ({s.folder}): {len(s.trials)} finished trials, best first\n\n{sweep_table(s)}"
        for s in sweeps])
    print(text)
    if a.markdown:
        Path(a.markdown).write_text(text + "\n")
    print(f"\ncomparison plot: {report_plot(runs, Path(a.plot), labels)} (curves: {', '.join(labels)})")


def _progress(a) -> bool:
    """Progress bars only on a terminal: piped or logged output stays free of carriage-return noise."""
    return not a.no_progress and sys.stderr.isatty()


def _set_threads(n: int | None) -> None:
    """--threads: the CPU threads PyTorch and OpenCV may use (default: theirs, every core)."""
    if n is None:
        return
    if n < 1:
        raise ValueError(f"--threads must be >= 1, got {n}")
    import cv2
    import torch
    torch.set_num_threads(n)
    cv2.setNumThreads(n)


def _cmd_predict(a):
    _set_threads(a.threads)
    from .inference.output import predict_paths
    from .inference.predictor import Predictor
    options = {k: v for k, v in (("margin", a.margin), ("min_face", a.min_face), ("align", a.align),
                                 ("detect_every", a.detect_every)) if v is not None}
    if "min_face" in options and a.detector != "mtcnn":
        raise ValueError(f"--min-face is an mtcnn option; the {a.detector} detector does not take it")
    predictor = Predictor(a.model, detector=a.detector, device=a.device, batch_size=a.batch_size,
                          tta=not a.no_tta, **options)
    res = predict_paths(a.paths, predictor, a.format, a.save, a.every, progress=_progress(a),
                        video_timeout_s=a.timeout)
    if res["save_error"]:  # the copies asked for are missing: an error, --keep-going or not
        raise RuntimeError(f"{res['save_error']}; saving stopped there ({len(res['saved'])} annotated file(s) "
                           "written before it are whole, nothing partial is left), every input's rows were printed")
    if res["errors"] and not a.keep_going:
        raise RuntimeError(f"{len(res['errors'])} of the inputs could not be read (listed above; the rest "
                           "were processed); pass --keep-going to exit 0 anyway")


def _cmd_explain(a):
    from pathlib import Path

    from .inference.predictor import Predictor
    options = {"align": a.align} if a.align is not None else {}
    predictor = Predictor(a.model, detector=a.detector, device=a.device, tta=not a.no_tta, **options)
    _explain_photos(predictor, a.photos, Path(a.out))


def _explain_photos(predictor, photos, out_dir, rows: bool = True) -> None:
    """Each photo's faces explained (Grad-CAM) into out_dir/PHOTO_explained.png; with `rows`, a JSON line per face
    on stdout."""
    import json
    from pathlib import Path

    from PIL import Image

    from .inference.explain import draw_explained
    from .inference.output import free_name
    from .inference.sources import read_image
    out_dir.mkdir(parents=True, exist_ok=True)
    written: set[Path] = set()
    for path in photos:
        rgb = read_image(path)
        faces = predictor.explain(rgb)
        target = free_name(out_dir / f"{Path(path).stem}_explained.png", written)  # never over an existing file
        written.add(target)
        Image.fromarray(draw_explained(rgb, faces)).save(target)
        for f in faces if rows else ():
            row = {k: v for k, v in f.items() if k != "heatmap"}
            print(json.dumps({**row, "source": path, "explained": str(target)}), flush=True)
        print(f"{path}: {len(faces)} face(s){'' if faces else ' (no face found)'} -> {target}", file=sys.stderr)


def _cmd_demo(a):
    """predict and explain on scikit-image's astronaut photo: no dataset, no download."""
    from pathlib import Path

    from PIL import Image
    from skimage import data as skdata

    from ._atomic import replacing
    from .inference.output import predict_paths
    from .inference.predictor import Predictor
    out = Path(a.out)
    photo = out / "astronaut.png"
    with replacing(photo) as tmp:
        Image.fromarray(skdata.astronaut()).save(tmp)
    for old in (out / "astronaut_annotated.png", out / "astronaut_explained.png"):  # this demo's own, from before
        old.unlink(missing_ok=True)
    print(f"ferlab demo: scikit-image's astronaut photo (Eileen Collins, NASA) -> {photo}", file=sys.stderr)
    predictor = Predictor("default", device="cpu")
    res = predict_paths([str(photo)], predictor, "table", save=out, progress=False)
    if res["save_error"]:
        raise RuntimeError(str(res["save_error"]))
    sys.stdout.flush()
    _explain_photos(predictor, [str(photo)], out, rows=False)


def _cmd_export(a):
    from .inference.onnx import PARITY_TOL, export_onnx
    rep = export_onnx(a.checkpoint, a.output, data=a.data, opset=a.opset, int8=a.int8)
    checked = ", ".join(f"{d:.1e} on {rep['faces_checked'][k]} {k} faces" for k, d in rep["max_abs_diff"].items())
    if "int8" in rep:
        q = rep["int8"]
        agree = ", ".join(f"{v:.1%} of {rep['faces_checked'][k]} {k} faces" for k, v in q["label_agreement"].items())
        print(f"wrote {rep['path']} ({rep['bytes'] / 2**20:.1f} MiB, opset {rep['opset']}, int8 convolutions, "
              f"matrix products and pools calibrated on {q['calibration_faces']} Training faces; input: uint8 grey "
              f"faces, preprocessing in the graph); the float graph matched PyTorch (max |dp| = {checked}); the int8 "
              f"one gives PyTorch's label on {agree} (max |dp| {q['max_abs_diff']:.3f})")
        return
    print(f"wrote {rep['path']} ({rep['bytes'] / 2**20:.1f} MiB, opset {rep['opset']}; input: uint8 grey faces, "
          f"preprocessing in the graph); ONNX Runtime matches PyTorch: max |dp| = {checked} (<= {PARITY_TOL:.0e})")


# Each verb's `-h` ends with these, after its description (the verb's one-line help)
EXAMPLES = {
    "demo": ["ferlab demo                        # writes demo/astronaut_annotated.png and _explained.png",
             "ferlab demo --out /tmp/ferlab-demo"],
    "data": ["ferlab data ~/Downloads/fer2013.zip",
             "ferlab data fer2013.csv --stats    # brightness, contrast, sharpness per split"],
    "train": ["ferlab train vgg_s_cpu48 --data ~/Downloads/fer2013.zip",
              "ferlab train seed/iter1_simple_cnn epochs=5 lr=0.01 --data fer2013.csv",
              "ferlab train teacher_vgg_s_long2 init=default epochs=10 lr=0.01   # fine-tune the shipped model",
              "ferlab train --resume runs/vgg_s_cpu48"],
    "configs": ["ferlab configs",
                "ferlab configs vgg_s_cpu48 > mine.yaml   # then: ferlab train mine.yaml"],
    "sweep": ["ferlab sweep seed_regularisation --trials 20 --data fer2013.csv",
              "ferlab sweep seed_regularisation --report"],
    "eval": ["ferlab eval default --data fer2013.csv",
             "ferlab eval runs/vgg_s_cpu48 --split val --ten-crop",
             "ferlab eval runs/a runs/b --data fer2013.csv   # the two as an ensemble"],
    "calibrate": ["ferlab calibrate runs/vgg_s_cpu48 --data fer2013.csv",
                  "ferlab calibrate runs/vgg_s_cpu48 --min-recall disgust=45"],
    "interpolate": ["ferlab interpolate runs/teacher_vgg_m_long runs/finetune_teacher_vgg_m_long_robust "
                    "--alpha 0.5 --out runs/wise_teacher_vgg_m_long   # then: ferlab calibrate runs/wise_...",
                    "ferlab interpolate runs/teacher_vgg_s_long2 members/finetune.pt --alpha 0.3 --out runs/wise_a30"],
    "report": ["ferlab report runs/seed_iter* --markdown runs/seed_report.md",
               "ferlab report runs/ --plot runs.png"],
    "serve": ["ferlab serve                       # http://127.0.0.1:8000/",
              "ferlab serve --host 0.0.0.0 --port 8080 --workers 2",
              "ferlab serve --model runs/vgg_s_cpu48 --detector haar"],
    "predict": ["ferlab predict photo.jpg",
                "ferlab predict photos/ clip.mp4 --format table --save annotated/",
                "ferlab predict photos/ --format json > faces.json",
                "ferlab predict 0 --every 5           # camera 0, every 5th frame"],
    "explain": ["ferlab explain photo.jpg",
                "ferlab explain a.jpg b.png --out heatmaps/ --model runs/vgg_s_cpu48"],
    "export": ["ferlab export default -o ferlab.onnx",
               "ferlab export runs/vgg_s_cpu48 --int8 --data fer2013.csv"],
}


def _verb(sub, name: str, help: str) -> argparse.ArgumentParser:
    """A verb's parser: its help line also as the description of its `-h`, with its examples below."""
    return sub.add_parser(name, help=help, description=help[0].upper() + help[1:] + ".",
                          epilog="Examples:\n" + "\n".join(f"  {e}" for e in EXAMPLES[name]),
                          formatter_class=argparse.RawDescriptionHelpFormatter)


def build_parser() -> argparse.ArgumentParser:
    from ._version import __version__
    p = argparse.ArgumentParser(prog="ferlab", description="Facial expression recognition on FER2013.")
    p.add_argument("--version", action="version", version=f"ferlab {__version__}")
    sub = p.add_subparsers(dest="verb", required=True, metavar="VERB")
    p.verbs = sub.choices  # every verb's parser by name (the did-you-mean of a mistyped verb)

    s = _verb(sub, "demo", help="predict and explain on an example photo shipped with scikit-image (no dataset, "
                               "no download): prints the table, writes the annotated and the explained picture")
    s.add_argument("--out", default="demo", metavar="DIR",
                   help="folder for astronaut.png, astronaut_annotated.png and astronaut_explained.png "
                        "(default: demo/)")
    s.set_defaults(fn=_cmd_demo)

    s = _verb(sub, "data", help="describe a FER2013 source: form, counts per split and class, image size")
    s.add_argument("path", nargs="?", help="folder, .zip/.tar.gz, or CSV (default: $FERLAB_DATA)")
    s.add_argument("--skip-bad", action="store_true", help="drop bad rows/files and report how many")
    s.add_argument("--no-cache", action="store_true", help="decode again instead of using the array cache")
    s.add_argument("--stats", action="store_true",
                   help="per-split brightness, contrast and sharpness (reveals train/test shifts), and how many "
                        "faces carry FER+ votes and how often their FER2013 label is the FER+ majority")
    s.add_argument("--split", default="official", help="split protocol for --stats (official or seed)")
    s.set_defaults(fn=_cmd_data)

    s = _verb(sub, "train", help="train one model from a YAML config")
    s.add_argument("config", nargs="?", help="a packaged config's name (ferlab configs lists them, e.g. "
                   "vgg_s_cpu48) or a YAML file; optional with --resume")
    s.add_argument("overrides", nargs="*", help="key=value overrides, e.g. epochs=5 lr=0.01 augment.erase=0")
    s.add_argument("--data", help="FER2013 location (default: the config's, else $FERLAB_DATA)")
    s.add_argument("--device", help="cpu, cuda, cuda:1 (default: cuda when available)")
    s.add_argument("--resume", metavar="RUN_DIR", help="continue an interrupted run from RUN_DIR/last.pt")
    s.add_argument("--wandb", action="store_true", help="also log to Weights & Biases (offline: WANDB_MODE=offline)")
    s.add_argument("--wandb-project", default="ferlab", help="W&B project name (default: ferlab)")
    s.add_argument("--no-progress", action="store_true", help="no per-batch progress bar")
    s.set_defaults(fn=_cmd_train)

    s = _verb(sub, "configs", help="list the configs shipped with ferlab, or print one (to copy and edit)")
    s.add_argument("name", nargs="?", help="a config's or a sweep's name: print its YAML")
    s.set_defaults(fn=_cmd_configs)

    s = _verb(sub, "sweep", help="hyper-parameter search with Optuna; each trial is a run folder")
    s.add_argument("sweep", help="a packaged sweep's name (ferlab configs lists them, e.g. seed_regularisation) "
                                 "or a sweep YAML file")
    s.add_argument("overrides", nargs="*", help="key=value overrides applied to every trial, e.g. epochs=3")
    s.add_argument("--trials", type=int, help="trials this worker runs at most (default: the sweep's 'trials', "
                   "else 20, else no cap when a total is set)")
    s.add_argument("--total-trials", type=int, metavar="N", help="the study's budget: stop when it holds N finished "
                   "trials, counted over all workers (default: the sweep's 'total_trials')")
    s.add_argument("--timeout", type=float, metavar="S", help="stop starting new trials after S seconds")
    s.add_argument("--storage", metavar="URL", help="Optuna storage shared by workers, e.g. "
                   "postgresql://user@host/db (default: sqlite study.db in the sweep folder)")
    s.add_argument("--study", help="study name (default: the sweep's 'name'); workers with the same one share it")
    s.add_argument("--heartbeat", type=int, default=60, metavar="S",
                   help="seconds between a running trial's heartbeats; a trial silent for 3 beats (its worker died) "
                        "is marked FAIL by the next worker to look (default: 60)")
    s.add_argument("--report", action="store_true",
                   help="run no trial: print the study's best trials and write best.yaml and plots (also while "
                        "workers run)")
    s.add_argument("--data", help="FER2013 location (default: the config's, else $FERLAB_DATA)")
    s.add_argument("--device", help="cpu, cuda, cuda:1 (default: cuda when available)")
    s.set_defaults(fn=_cmd_sweep)

    s = _verb(sub, "eval", help="accuracy, per-class precision/recall/F1 and confusion matrix of a model")
    s.add_argument("runs", nargs="+", metavar="RUN_OR_CHECKPOINT",
                   help="run folder(s), .pt file(s), 'default', 'ensemble', 'robust' or 'ferplus'; several = an ensemble (probabilities averaged)")
    s.add_argument("--split", default="test", choices=["train", "val", "test"])
    s.add_argument("--data", help="FER2013 location (default: the run's, else $FERLAB_DATA)")
    s.add_argument("--device", default="auto")
    s.add_argument("--no-tta", action="store_true", help="skip the horizontal-flip TTA evaluation")
    s.add_argument("--ten-crop", action="store_true",
                   help="also report ten-crop TTA, for models trained with random crops / shifts")
    s.add_argument("--out", help="draw the confusion matrix into this PNG and the reliability diagram beside it "
                                 "(default: no plots)")
    s.set_defaults(fn=_cmd_eval)

    s = _verb(sub, "calibrate", help="fit a model's temperature on the validation split (PublicTest) and "
                                         "store it in its checkpoint")
    s.add_argument("checkpoint", metavar="RUN_OR_CHECKPOINT", help="run folder (its best.pt) or .pt checkpoint")
    s.add_argument("--data", help="FER2013 location (default: the run's, else $FERLAB_DATA)")
    s.add_argument("--tta", default="flip", choices=["flip", "none"],
                   help="the predictions to calibrate: flip-TTA (as the Predictor makes them, default) or plain")
    s.add_argument("--device", default="auto")
    s.add_argument("--min-recall", action="append", default=[], metavar="CLASS=PERCENT",
                   help="also fit a logit adjustment (training-prior correction) so that CLASS reaches PERCENT "
                        "recall on the validation split, e.g. disgust=45; repeatable")
    s.set_defaults(fn=_cmd_calibrate)

    s = _verb(sub, "interpolate", help="average the weights of a run and its fine-tune (or two runs of one "
                                       "network): a new run, (1 - alpha) x the first + alpha x the second")
    s.add_argument("first", metavar="RUN_OR_CHECKPOINT", help="run folder (its best.pt) or .pt checkpoint")
    s.add_argument("second", metavar="RUN_OR_CHECKPOINT", help="the other end, the same network")
    s.add_argument("--alpha", type=float, default=0.5, help="weight of the second, 0 to 1 (default: 0.5)")
    s.add_argument("--out", required=True, metavar="DIR", help="new run folder for best.pt (must not hold files)")
    s.set_defaults(fn=_cmd_interpolate)

    s = _verb(sub, "report", help="the seed's iteration table for a set of runs, plus a comparison plot")
    s.add_argument("runs", nargs="+", help="run folders, folders holding run folders, or sweep folders (a row per "
                                           "trial; the best trial's curves beside the runs')")
    s.add_argument("--markdown", help="also write the table to this file")
    s.add_argument("--plot", default="report.png", help="comparison plot path (default: report.png)")
    s.set_defaults(fn=_cmd_report)

    s = _verb(sub, "serve", help="REST API (POST /v1/predict, /v1/video) and web page for emotion recognition")
    s.add_argument("--model", default="default", help="'default', 'ensemble', 'robust' (for noisy, blurred, small or compressed faces), 'ferplus' (8 classes), a run folder, a .pt checkpoint or a .onnx file")
    s.add_argument("--detector", default="mtcnn", choices=DETECTOR_CHOICES,
                   help="face detector: mtcnn (default), haar (OpenCV; alias cascade), lbp (scikit-image) or none")
    s.add_argument("--device", default="cpu", help="cpu, cuda, cuda:1 (default: cpu)")
    s.add_argument("--host", default="127.0.0.1", help="address to listen on (default: 127.0.0.1; 0.0.0.0 = all)")
    s.add_argument("--port", type=int, default=8000)
    s.add_argument("--max-mb", type=float, default=10.0, help="largest upload in MiB (default: 10; larger -> 413)")
    s.add_argument("--max-pixels", type=int,
                   help="largest image in pixels, checked before decoding (default: 40 million; larger -> 413)")
    s.add_argument("--workers", type=int, default=1,
                   help="inference processes, each decoding and analysing one upload at a time; the other uploads "
                        "wait (default: 1). Each holds the model; memory for pixels is about workers x max-pixels "
                        "x 7 bytes")
    s.add_argument("--threads", type=int, default=None, metavar="N",
                   help="CPU threads for detection and classification, per worker (default: all cores but one, "
                        "left to the web server)")
    s.add_argument("--no-pin", dest="pin", action="store_false",
                   help="let the OS place the server and its inference workers anywhere (default: the server on "
                        "one core and the workers on the others, when there are at least two)")
    s.add_argument("--max-video-mb", type=float, default=50.0,
                   help="largest video upload in MiB (default: 50; larger -> 413)")
    s.add_argument("--max-video-frames", type=int, default=150,
                   help="frames analysed per video at most; a longer video is sampled more sparsely (default: 150)")
    s.add_argument("--photo-timeout", type=float, default=20.0, metavar="S",
                   help="seconds an inference worker may spend on one photo before it is killed and replaced, "
                        "the client getting a 503 (default: 20)")
    s.add_argument("--video-timeout", type=float, default=120.0, metavar="S",
                   help="the same for one video (default: 120)")
    s.add_argument("--max-queue", type=int, default=8, metavar="N",
                   help="uploads in the server at once, being received, waiting or analysed; more get a 503 with "
                        "Retry-After (default: 8)")
    s.add_argument("--request-timeout", type=float, default=30.0, metavar="S",
                   help="seconds a client has to send a whole request before its connection is closed (default: 30)")
    s.add_argument("--max-connections", type=int, default=1000, metavar="N",
                   help="open connections at most; more are closed as they open (default: 1000)")
    s.add_argument("--allow-host", action="append", default=[], metavar="NAME",
                   help="a host name this server may be reached by besides IP addresses and localhost "
                        "(repeatable); requests naming any other Host are refused")
    s.add_argument("--allow-origin", action="append", default=[], metavar="URL",
                   help="a web page origin (https://app.example) allowed to call this API besides the server's own "
                        "page (repeatable); other sites' requests are refused")
    s.add_argument("--live-sessions", type=int, default=1, metavar="N",
                   help="the web page's live webcam sessions at once, each with an inference process of its own, "
                        "started at its first session; more are refused until one ends (default: 1: one session takes "
                        "over half a core at 25 frames/s)")
    s.set_defaults(fn=_cmd_serve)

    s = _verb(sub, "predict", help="expressions of the faces in images, folders, videos or a camera")
    s.add_argument("paths", nargs="+", metavar="PATH",
                   help="image, folder (searched recursively), video, or a camera index such as 0")
    s.add_argument("--model", default="default", help="'default', 'ensemble', 'robust' (for noisy, blurred, small or compressed faces), 'ferplus' (8 classes), a run folder, a .pt checkpoint or a .onnx file")
    s.add_argument("--detector", default="mtcnn", choices=DETECTOR_CHOICES,
                   help="mtcnn (default; CNNs in PyTorch, with eye landmarks), haar (OpenCV's cascade; alias "
                        "cascade) or lbp (scikit-image's): find faces; none: each image already is one face crop")
    s.add_argument("--min-face", type=float, default=None, metavar="PX",
                   help="mtcnn: smallest face looked for, in pixels (default: 40; smaller is slower)")
    s.add_argument("--align", action=argparse.BooleanOptionalAction, default=None,
                   help="turn each face upright by its eyes before classifying it (mtcnn only; default: on)")
    s.add_argument("--margin", type=float, default=None,
                   help="grow each detected box by this share of its size per side (default: 0, as FER2013 crops)")
    s.add_argument("--format", default="jsonl", choices=["jsonl", "json", "csv", "table"],
                   help="output: a JSON line per row, one JSON list of the rows (at the end), CSV, or a table "
                        "(default: jsonl)")
    s.add_argument("--save", metavar="DIR", help="write annotated images / videos (box + label + probability)")
    s.add_argument("--batch-size", type=int, default=64, help="faces per forward pass (default: 64)")
    s.add_argument("--every", type=int, default=1, metavar="N", help="use every N-th video frame (default: 1)")
    s.add_argument("--detect-every", type=int, default=None, metavar="K",
                   help="videos and cameras, mtcnn: look for faces in the whole frame on every K-th analysed frame "
                        "(and at once when a face is lost), following the faces found with MTCNN's last stage alone "
                        "on the frames between; a new face is found up to K-1 frames late (default: 10; 1: a full "
                        "detection on every frame)")
    s.add_argument("--timeout", type=float, default=None, metavar="S",
                   help="stop a video still being analysed after S seconds, keeping its rows so far and reporting "
                        "it as an error of that file (default: no limit; JPEGs of absurdly many scans and images "
                        "over the pixel limit are refused before decoding either way)")
    s.add_argument("--device", default="cpu", help="cpu, auto, cuda, cuda:1 (default: cpu)")
    s.add_argument("--no-tta", action="store_true",
                   help="classify each face once, not also its mirror image (faster, slightly less accurate)")
    s.add_argument("--keep-going", action="store_true", help="exit 0 even when some inputs could not be read")
    s.add_argument("--threads", type=int, default=None, metavar="N",
                   help="CPU threads for detection and classification (default: all cores)")
    s.add_argument("--no-progress", action="store_true", help="no progress bar")
    s.set_defaults(fn=_cmd_predict)

    s = _verb(sub, "explain", help="Grad-CAM: which regions of each face drove its label, drawn on the photo")
    s.add_argument("photos", nargs="+", metavar="PHOTO", help="image files")
    s.add_argument("--out", default="explained", metavar="DIR",
                   help="folder for PHOTO_explained.png (default: explained/)")
    s.add_argument("--model", default="default", help="'default', 'ensemble', 'robust' (for noisy, blurred, small or compressed faces), 'ferplus' (8 classes), a run folder or a .pt checkpoint")
    s.add_argument("--detector", default="mtcnn", choices=DETECTOR_CHOICES, help="face detector (default: mtcnn)")
    s.add_argument("--align", action=argparse.BooleanOptionalAction, default=None,
                   help="turn each face upright by its eyes first (mtcnn only; default: on)")
    s.add_argument("--device", default="cpu", help="cpu, auto, cuda, cuda:1 (default: cpu)")
    s.add_argument("--no-tta", action="store_true", help="explain the face alone, not also its mirror image")
    s.set_defaults(fn=_cmd_explain)

    s = _verb(sub, "export", help="export a model to standalone ONNX (preprocessing inside), checked against "
                                      "PyTorch")
    s.add_argument("checkpoint", metavar="RUN_OR_CHECKPOINT", help="run folder, .pt checkpoint, 'default', 'ensemble', 'robust' or 'ferplus'")
    s.add_argument("--format", default="onnx", choices=["onnx"], help="export format (default: onnx)")
    s.add_argument("-o", "--output", help="output file (default: RUN_DIR/model.onnx or CHECKPOINT.onnx)")
    s.add_argument("--data", help="FER2013 to check parity on real faces too (default: $FERLAB_DATA if set; "
                                  "synthetic faces are always checked)")
    s.add_argument("--opset", type=int, default=17, help="ONNX opset (default: 17)")
    s.add_argument("--int8", action="store_true", help="quantize the convolutions, matrix products and pools to "
                   "int8 (about 2.7x faster on CPUs with VNNI; calibrated on Training faces of --data, which it needs; "
                   "default output RUN_DIR/model.int8.onnx or CHECKPOINT.int8.onnx)")
    s.set_defaults(fn=_cmd_export)
    return p


class _PipeSafeStdout(io.TextIOBase):
    """stdout that falls silent when its reader goes away (`ferlab ... | head -1`): the work goes on, unprinted,
    instead of dying with BrokenPipeError (a training run piped into head keeps training)."""

    def __init__(self, stream):
        self._stream, self._gone = stream, False

    def write(self, text: str) -> int:
        if not self._gone:
            try:
                return self._stream.write(text)
            except BrokenPipeError:
                self._reader_gone()
        return len(text)

    def flush(self) -> None:
        if not self._gone:
            try:
                self._stream.flush()
            except BrokenPipeError:
                self._reader_gone()

    def _reader_gone(self) -> None:
        self._gone = True
        try:  # the interpreter flushes fd 1 at exit too: point it at /dev/null so that flush has nowhere to fail
            null = os.open(os.devnull, os.O_WRONLY)
            os.dup2(null, self._stream.fileno())
            os.close(null)
        except (OSError, ValueError, io.UnsupportedOperation):
            pass

    def fileno(self) -> int:
        return self._stream.fileno()

    def isatty(self) -> bool:
        return self._stream.isatty()


def main(argv: list[str] | None = None) -> int:
    stdout, sys.stdout = sys.stdout, _PipeSafeStdout(sys.stdout)
    try:
        return _main(argv)
    finally:
        sys.stdout.flush()
        sys.stdout = stdout


def _unknown_verb(argv: list[str], verbs: list[str]) -> str | None:
    """What is wrong with the verb (the first word that is no option: `ferlab` itself takes only -h and
    --version), with the nearest verb and the list of them; None when it is one of them or there is none."""
    word = next((w for w in argv if not w.startswith("-")), None)
    if word is None or word in verbs:
        return None
    near = difflib.get_close_matches(word, verbs, n=1)
    return f"unknown command {word!r}" + (f"; did you mean {near[0]!r}?" if near else ".") + \
        f" Commands: {', '.join(verbs)}"


def _main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    unknown = _unknown_verb(list(sys.argv[1:] if argv is None else argv), list(parser.verbs))
    if unknown:
        print(f"ferlab: error: {unknown}", file=sys.stderr)
        return 2
    args, extra = parser.parse_known_args(argv)
    # key=value overrides may sit anywhere among the options (argparse stops collecting them at a flag)
    if extra:
        bad = [e for e in extra if "=" not in e or e.startswith("-")]
        if bad or not hasattr(args, "overrides"):
            parser.error(f"unrecognized arguments: {' '.join(bad or extra)}")
        args.overrides = list(args.overrides) + extra
    from ._optional import MissingExtra
    from .data import DataError
    try:
        args.fn(args)
    except (DataError, ValueError, FileNotFoundError, RuntimeError) as e:
        print(f"ferlab {args.verb}: error: {e}", file=sys.stderr)
        return 2
    except MissingExtra as e:  # one line that names the extra to install ("ferlab serve needs the 'serve' ...")
        print(e if str(e).startswith(f"ferlab {args.verb} ") else f"ferlab {args.verb}: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"ferlab {args.verb}: interrupted", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
