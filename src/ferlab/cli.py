"""`ferlab` command: verbs only. Each parses its arguments and calls the function the Python API exposes."""
from __future__ import annotations

import argparse
import sys


def _cmd_data(a):
    from .data import load_fer2013
    data = load_fer2013(a.path, skip_bad=a.skip_bad, cache=not a.no_cache)
    print(data.summary())
    if data.skipped:
        print(f"\n{len(data.skipped)} bad rows skipped, first few:", *data.skipped[:5], sep="\n  ")


def _cmd_train(a):
    from .engine import fit, load_config
    overrides = list(a.overrides)
    if a.data:
        overrides.append(f"data={a.data}")
    if a.device:
        overrides.append(f"device={a.device}")
    cfg = load_config(a.config, overrides)
    fit(cfg, resume=a.resume, wandb_project=a.wandb_project if a.wandb else None, progress=not a.no_progress)


def _cmd_serve(a):
    import uvicorn

    from .serve.app import MAX_PIXELS, create_app
    app = create_app(model=a.model, detector=a.detector, device=a.device, max_bytes=round(a.max_mb * 2**20),
                     max_pixels=a.max_pixels or MAX_PIXELS)
    print(f"ferlab serve: web page at http://{a.host}:{a.port}/  API docs at http://{a.host}:{a.port}/docs")
    uvicorn.run(app, host=a.host, port=a.port)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="ferlab", description="Facial expression recognition on FER2013.")
    sub = p.add_subparsers(dest="verb", required=True, metavar="VERB")

    s = sub.add_parser("data", help="describe a FER2013 source: form, counts per split and class, image size")
    s.add_argument("path", nargs="?", help="folder, .zip/.tar.gz, or CSV (default: $FERLAB_DATA)")
    s.add_argument("--skip-bad", action="store_true", help="drop bad rows/files and report how many")
    s.add_argument("--no-cache", action="store_true", help="decode again instead of using the array cache")
    s.set_defaults(fn=_cmd_data)

    s = sub.add_parser("train", help="train one model from a YAML config")
    s.add_argument("config", nargs="?", help="YAML config (see configs/); optional with --resume")
    s.add_argument("overrides", nargs="*", help="key=value overrides, e.g. epochs=5 lr=0.01 augment.erase=0")
    s.add_argument("--data", help="FER2013 location (default: the config's, else $FERLAB_DATA)")
    s.add_argument("--device", help="cpu, cuda, cuda:1 (default: cuda when available)")
    s.add_argument("--resume", metavar="RUN_DIR", help="continue an interrupted run from RUN_DIR/last.pt")
    s.add_argument("--wandb", action="store_true", help="also log to Weights & Biases (offline: WANDB_MODE=offline)")
    s.add_argument("--wandb-project", default="ferlab", help="W&B project name (default: ferlab)")
    s.add_argument("--no-progress", action="store_true", help="no per-batch progress bar")
    s.set_defaults(fn=_cmd_train)
    s = sub.add_parser("serve", help="REST API (POST /v1/predict) and web page for emotion recognition")
    s.add_argument("--model", default="default", help="'default', a run folder, a .pt checkpoint or a .onnx file")
    s.add_argument("--detector", default="haar", help="face detector: haar (= cascade) or none (whole image is one face)")
    s.add_argument("--device", default="cpu", help="cpu, cuda, cuda:1 (default: cpu)")
    s.add_argument("--host", default="127.0.0.1", help="address to listen on (default: 127.0.0.1; 0.0.0.0 = all)")
    s.add_argument("--port", type=int, default=8000)
    s.add_argument("--max-mb", type=float, default=10.0, help="largest upload in MiB (default: 10; larger -> 413)")
    s.add_argument("--max-pixels", type=int,
                   help="largest image in pixels, checked before decoding (default: 40 million; larger -> 413)")
    s.set_defaults(fn=_cmd_serve)
    return p


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args, extra = parser.parse_known_args(argv)
    # key=value overrides may sit anywhere among the options (argparse stops collecting them at a flag)
    if extra:
        bad = [e for e in extra if "=" not in e or e.startswith("-")]
        if bad or not hasattr(args, "overrides"):
            parser.error(f"unrecognized arguments: {' '.join(bad or extra)}")
        args.overrides = list(args.overrides) + extra
    from .data import DataError
    try:
        args.fn(args)
    except (DataError, ValueError, FileNotFoundError, RuntimeError) as e:
        print(f"ferlab {args.verb}: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"ferlab {args.verb}: interrupted", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
