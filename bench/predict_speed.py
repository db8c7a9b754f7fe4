"""Prediction speed: end-to-end `predict` on a folder, and classifier-only latency, PyTorch vs ONNX Runtime.

    python bench/predict_speed.py --data /path/to/fer2013 [--model RUN_OR_CHECKPOINT_OR_ARCH] [--folder PHOTOS]
    python bench/predict_speed.py --photos-only --model default --fer-python /path/to/venv-with-fer/bin/python

End to end = read + detect + crop/preprocess + classify, over a folder of photos (default: 16 variants of
skimage's public-domain astronaut photo, 512x512, made at run time) with each face detector (MTCNN, the
default; OpenCV's Haar cascade; scikit-image's LBP cascade), and over real FER2013 face crops with --detector none.
Classifier only = uint8 faces at the model's size in, per face, at batch 1 and 64, on real FER2013 faces, with
--threads and with every core: PyTorch fp32 and bf16, ONNX Runtime, and (with --data, for trained weights) the int8
export. An architecture name for --model (e.g. vgg_s_wide_late) times an untrained net of it, to size a net before
training it. With the `fer` package at hand (here, or in the Python given by --fer-python, since it needs
TensorFlow), it is timed by bench/fer_worker.py on the same photos at three sizes: the 512x512 astronauts, and 8
photos each of 1350x550 and 1920x1080, where the astronaut (at 1x-2x) is placed on a face-free skimage photo
(coffee, rocket) stretched to that size. ferlab is timed one `Predictor.predict` call per photo and on the whole
folder (frames detected in batched groups); fer one call per photo (it has no batch call). The passes of both sides
are interleaved, so that they share the machine's load, and the median pass of each counts, in wall-clock and in CPU
seconds. --photos-only runs only that comparison (no FER2013 needed). --fer-margin measures how each detector's box
relates to a FER2013 crop.
Prints Markdown tables.

    python bench/predict_speed.py --videos-only [--detect-every 5,10,15] [--video-threads 1] [--video-rounds 3]

Videos (after the rest, or alone with --videos-only, which needs no FER2013): clips made at run time by
bench/video_clips.py (the astronaut moving over a photo; 10 s at 30 frames/s, H.264) at 640x480 and 1280x720
with one face, and at 640x480 with two faces, with a face entering and leaving, and with two faces crossing;
frames/s end to end (decode, detect, crop, classify with flip TTA) with a full detection on every frame and on
every K-th (faces followed between, `Predictor(detect_every=K)`), with --video-threads (default 1), and how
often the faces and labels of every K agree with those of a detection on every frame. The model is --model, or
the packaged default (labels need a trained model).
"""
from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
from collections import defaultdict
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from ferlab.data import load_fer2013
from ferlab.engine import TrainConfig, load_checkpoint, model_from_checkpoint, save_checkpoint
from ferlab.engine.trainer import build_preprocess
from ferlab.inference.detect import make_detector
from ferlab.inference.onnx import OnnxClassifier, export_onnx, real_faces
from ferlab.inference.predictor import Predictor, fold_batchnorm
from ferlab.inference.sources import expand_sources
from ferlab.inference.preprocess import to_model_input, to_model_pixels
from ferlab.models import create_model, list_models


def astronaut_folder(root: Path, n: int = 16) -> Path:
    from skimage import data
    img = data.astronaut()
    for i in range(n):
        shifted = np.roll(img, (5 * i, -7 * i), axis=(0, 1))
        Image.fromarray(shifted[:, ::-1] if i % 2 else shifted).save(root / f"astronaut_{i:02d}.jpg", quality=92)
    return root


def faces_folder(root: Path, faces: np.ndarray) -> Path:
    for i, f in enumerate(faces):
        Image.fromarray(f).save(root / f"face_{i:03d}.png")
    return root


def end_to_end(model: str, folder: Path, detector: str, batch_size: int, rounds: int = 1) -> dict:
    """Images, faces and the median seconds of `rounds` passes of `Predictor.stream` over the folder."""
    pred = Predictor(model, detector=detector, batch_size=batch_size)
    pred.predict(expand_sources(folder)[0][0])  # warm-up
    times = []
    for _ in range(rounds):
        n_images = n_faces = 0
        t = time.perf_counter()
        for _, faces in pred.stream(folder):
            n_images += 1
            n_faces += len(faces)
        times.append(time.perf_counter() - t)
    return {"images": n_images, "faces": n_faces, "s": statistics.median(times)}


def placed_photo(width: int, height: int, i: int) -> np.ndarray:
    """A width x height RGB photo with one face: skimage's astronaut (scaled 1x, 1.5x, 2x or 1.25x on photos 1024
    pixels high or more; fit to the height below that), mirrored every other photo, at a seeded random place on
    skimage's coffee or rocket photo (no faces) stretched to the size."""
    import cv2
    from skimage import data
    face = data.astronaut()
    scale = (1.0, 1.5, 2.0, 1.25)[i % 4] if height >= 1024 else min(1.0, height / 512)
    if scale != 1.0:
        face = cv2.resize(face, None, fx=scale, fy=scale, interpolation=cv2.INTER_AREA if scale < 1 else cv2.INTER_CUBIC)
    face = face[:height, :width]
    bg = cv2.resize(data.coffee() if i % 2 == 0 else data.rocket(), (width, height), interpolation=cv2.INTER_CUBIC)
    out = np.ascontiguousarray(bg[:, ::-1] if i % 3 == 1 else bg)
    h, w = face.shape[:2]
    rng = np.random.default_rng(i)
    x, y = int(rng.integers(0, width - w + 1)), int(rng.integers(0, height - h + 1))
    out[y:y + h, x:x + w] = face[:, ::-1] if i % 2 else face
    return out


def photo_folders(root: Path, astronauts: Path | None = None, n: int = 8) -> dict[str, Path]:
    """The comparison's photo sets by size: the 512x512 astronaut variants, and `n` placed photos each of
    1350x550 and 1920x1080 (JPEG, quality 92)."""
    folders = {"512x512": astronauts or astronaut_folder(_mkdir(root / "512x512"))}
    for w, h in ((1350, 550), (1920, 1080)):
        folder = folders[f"{w}x{h}"] = _mkdir(root / f"{w}x{h}")
        for i in range(n):
            Image.fromarray(placed_photo(w, h, i)).save(folder / f"photo_{i:02d}.jpg", quality=92)
    return folders


def _mkdir(path: Path) -> Path:
    path.mkdir(parents=True, exist_ok=True)
    return path


def ferlab_pass(pred: Predictor, folder: Path, batch: bool) -> dict:
    """Seconds (wall and CPU) of one pass over the folder's photos, and the boxes per photo: one
    `Predictor.predict` call per photo, or with `batch` the whole folder through `Predictor.stream`."""
    photos = [p for p, _ in expand_sources(folder)]
    t, c = time.perf_counter(), time.process_time()
    if batch:
        boxes = [[f["box"] for f in faces] for _, faces in pred.stream(folder)]
    else:
        boxes = [[f["box"] for f in pred.predict(p)] for p in photos]
    return {"s": time.perf_counter() - t, "cpu_s": time.process_time() - c, "boxes": boxes, "images": len(photos)}


def against_fer(fer_python: str | None, model: str, folders: dict[str, Path], threads: int, rounds: int) -> None:
    """ferlab (one call per photo, and batched) and `fer` (in its own Python: it needs TensorFlow) on each photo
    set, their passes interleaved; photos/s from the median pass of each, the ratios in wall-clock and in CPU
    time, and whether both found the same faces (same count per photo, each box overlapping one of the other's by
    IoU >= 0.5)."""
    import json
    import subprocess
    from ferlab.inference.video import iou
    pred = Predictor(model)
    fer = None
    if fer_python:
        worker = Path(__file__).with_name("fer_worker.py")
        log = tempfile.TemporaryFile("w+")  # not a pipe: TensorFlow's chatter could fill one and block fer
        fer = subprocess.Popen([fer_python, str(worker), "--stdin", "--threads", str(threads)], stdin=subprocess.PIPE,
                               stdout=subprocess.PIPE, stderr=log, text=True)
        if fer.stdout.readline().strip() != "ready":
            fer.kill()
            log.seek(0)
            print(f"\nfer could not run with {fer_python}: {log.read().strip().splitlines()[-1:]}")
            fer = None
    passes: dict[tuple[str, str], list[dict]] = {}
    for name, folder in folders.items():
        ferlab_pass(pred, folder, False)  # warm-up: first-call costs of each new photo size
        for _ in range(rounds):
            for side in ("single", "batch", "fer"):
                if side == "fer":
                    if fer is None:
                        continue
                    fer.stdin.write(f"{folder}\n")
                    fer.stdin.flush()
                    r = json.loads(fer.stdout.readline())
                else:
                    r = ferlab_pass(pred, folder, side == "batch")
                passes.setdefault((name, side), []).append(r)
    if fer is not None:
        fer.stdin.close()
        fer.wait(timeout=60)
    med = {k: {"s": statistics.median(r["s"] for r in v), "cpu_s": statistics.median(r["cpu_s"] for r in v),
               "images": v[0]["images"], "boxes": v[-1]["boxes"]} for k, v in passes.items()}
    print(f"\n| photos, {threads} thread(s), median of {rounds} interleaved passes | images | ferlab, one call per "
          f"photo: photos/s | ferlab, batched: photos/s | fer: photos/s | ferlab / fer, one call per photo "
          f"(CPU time) | ferlab / fer, batched (CPU time) | faces ferlab / fer | same faces |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|")
    for name in folders:
        one, many, theirs = med[name, "single"], med[name, "batch"], med.get((name, "fer"))
        n = one["images"]
        row = f"| {name} | {n} | {n / one['s']:.1f} | {n / many['s']:.1f} | "
        if theirs is None:
            print(row + "- | - | - | " + f"{sum(map(len, one['boxes']))} / - | - |")
            continue
        same = sum(len(a) == len(b) and all(any(iou(x, y) >= 0.5 for y in b) for x in a)
                   for a, b in zip(one["boxes"], theirs["boxes"]))
        print(row + f"{n / theirs['s']:.1f} | {theirs['s'] / one['s']:.2f}x ({theirs['cpu_s'] / one['cpu_s']:.2f}x) | "
              f"{theirs['s'] / many['s']:.2f}x ({theirs['cpu_s'] / many['cpu_s']:.2f}x) | "
              f"{sum(map(len, one['boxes']))} / {sum(map(len, theirs['boxes']))} | {same} of {n} |", flush=True)
    if fer is not None:
        info = passes[next(iter(folders)), "fer"][0]
        print(f"\nfer {info['fer']} (Haar + its CNN, TensorFlow {info['tensorflow']}); ferlab {model} "
              f"(mtcnn + flip TTA, PyTorch)")
    else:
        print("\n(fer not installed: pass --fer-python to compare against it)")


def latency(fn, x: torch.Tensor, repeats: int) -> float:
    """Median seconds per call of fn(x) after one warm-up call."""
    fn(x)
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn(x)
        times.append(time.perf_counter() - t)
    return statistics.median(times)


def fer_margin(data: str | None, n: int = 400) -> None:
    """How each detector's box relates to a FER2013 crop: FER2013 faces upscaled 2x and padded with their own
    border, found with margin 0; the (squared) box side relative to the crop's, and the crop centre's
    offset below the box centre, relative to the box side."""
    _fer_margin(make_detector("mtcnn", margin=0.0, min_face=20), "mtcnn", data, n, raw=True)
    for name in ("haar", "lbp"):
        _fer_margin(make_detector(name, margin=0.0, min_neighbors=3, relative=0.0), name, data, n)


def _fer_margin(det, name: str, data: str | None, n: int, raw: bool = False) -> None:
    import cv2
    ratios, offsets = [], []
    for f in real_faces(data, n):
        big = cv2.resize(f, (96, 96), interpolation=cv2.INTER_CUBIC)
        pad = cv2.copyMakeBorder(big, 48, 48, 48, 48, cv2.BORDER_REPLICATE)
        found = [x for x in det(pad) if abs(x.box[0] + x.box[2] / 2 - 96) < 24 and abs(x.box[1] + x.box[3] / 2 - 96) < 24]
        if found:
            x, y, w, h = max(found, key=lambda x: x.score).box
            ratios.append(w / 96)
            offsets.append((96 - (y + h / 2)) / w)
    q = np.percentile(ratios, [25, 50, 75])
    o = float(np.median(offsets))
    print(f"{name} box / FER2013 crop side on {len(ratios)} of {n} faces found: quartiles {q.round(3).tolist()}; "
          f"margin that reproduces the crop: {(1 / q[1] - 1) / 2:.3f}; crop centre below the box centre by "
          f"{o:.3f} of the box side (median)")


def video_rows(model: str, threads: int, rounds: int, every: list[int], seconds: float = 10.0) -> None:
    """The video table: frames/s with a full detection on every frame and on every K-th, and agreement with the
    former. The passes of all K over a clip are interleaved, round after round, so that they share the machine's
    load; the median pass of each counts, in wall-clock and in CPU seconds (all threads of the process)."""
    import cv2
    from video_clips import agreement, by_frame, make_clip
    torch.set_num_threads(threads)
    cv2.setNumThreads(threads)
    tmp = Path(tempfile.mkdtemp(prefix="ferlab-videos-"))
    print(f"\nmodel {model}, {threads} thread(s), torch {torch.__version__}, load average {os.getloadavg()[0]:.1f} "
          f"on {os.cpu_count()} cores; clips of {seconds:g} s at 30 frames/s; median of {rounds} rounds\n")
    print("| video (bench/video_clips.py) | detect every | frames/s | frames/s of CPU time | x every frame | "
          "full detections | same faces | same labels | least IoU |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|")
    ks = [1] + [k for k in every if k != 1]
    for size, scene in (((640, 480), "one"), ((1280, 720), "one"), ((640, 480), "two"), ((640, 480), "enter"),
                        ((640, 480), "cross")):
        path = make_clip(tmp / f"{scene}_{size[0]}x{size[1]}.mp4", size, seconds, scene=scene)
        predictors = {k: Predictor(model, detect_every=k) for k in ks}
        _, first = cv2.VideoCapture(str(path)).read()
        for p in predictors.values():
            p.predict(first, color="bgr")  # warm-up
        wall, cpu, faces = defaultdict(list), defaultdict(list), {}
        for _ in range(rounds):
            for k, p in predictors.items():
                follower = p.follower
                follower.detections = follower.frames = 0
                t, c = time.perf_counter(), time.process_time()
                faces[k] = by_frame(p.stream(path))
                wall[k].append(time.perf_counter() - t)
                cpu[k].append(time.process_time() - c)
        n = len(faces[1])
        base = n / statistics.median(cpu[1])
        what = {"one": "1 face", "two": "2 faces", "enter": "2 faces, 1 entering and leaving",
                "cross": "2 faces crossing"}[scene]
        for k in ks:
            rate = n / statistics.median(cpu[k])
            if k == 1:
                check = f"{n} of {n} | (the reference) | | |"
            else:
                agree, follower = agreement(faces[1], faces[k]), predictors[k].follower
                check = (f"{follower.detections} of {follower.frames} | {agree['faces']:.1%} | {agree['labels']:.1%} | "
                         f"{agree['min_iou']:.2f} |")
            print(f"| {size[0]}x{size[1]}, {what} | {k} | {n / statistics.median(wall[k]):.1f} | {rate:.1f} | "
                  f"{rate / base:.2f} | {check}", flush=True)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", help="FER2013 (default: $FERLAB_DATA): real faces for the timings and the ONNX check")
    ap.add_argument("--model", help="run folder, .pt, or a registered architecture (untrained: speed does not "
                                    "depend on the weights; default: an untrained vgg_s)")
    ap.add_argument("--folder", help="photos for the end-to-end timing (default: astronaut variants)")
    ap.add_argument("--threads", type=int, default=2, help="CPU threads for PyTorch and ONNX Runtime (default: 2)")
    ap.add_argument("--repeats", type=int, default=30)
    ap.add_argument("--rounds", type=int, default=5, help="passes over the photos for the ferlab-vs-fer comparison; "
                                                           "each side's median pass counts (default: 5)")
    ap.add_argument("--fer-margin", action="store_true", help="only measure the cascade box vs FER2013 crops")
    ap.add_argument("--photos-only", action="store_true", help="only the ferlab-vs-fer comparison on photos of "
                                                                "three sizes (no FER2013 needed)")
    ap.add_argument("--fer-python", help="a Python with the `fer` package (and TensorFlow) installed, to time it "
                                         "on the same photos (default: this one, if it has fer)")
    ap.add_argument("--videos-only", action="store_true", help="only the video rows (no FER2013 needed)")
    ap.add_argument("--detect-every", default="5,10,15", metavar="K,K",
                    help="video rows: full detections every K-th frame, against every frame (default: 5,10,15)")
    ap.add_argument("--video-threads", type=int, default=1, help="CPU threads for the video rows (default: 1)")
    ap.add_argument("--video-rounds", type=int, default=3, help="passes over each clip per K (default: 3)")
    ap.add_argument("--video-seconds", type=float, default=10.0, help="length of each clip (default: 10)")
    a = ap.parse_args()
    if a.fer_margin:
        fer_margin(a.data)
        return
    every = [int(k) for k in a.detect_every.split(",")]
    tmp = Path(tempfile.mkdtemp(prefix="ferlab-bench-"))
    model = a.model
    untrained = model is None or (model in list_models() and not Path(model).exists())
    if untrained:
        arch = model or "vgg_s"  # speed does not depend on the weights: an untrained net of that architecture
        cfg = TrainConfig(model=arch)
        pre = build_preprocess(cfg)
        net = create_model(arch, in_channels=pre.in_channels, input_size=pre.input_size)
        model = str(tmp / f"{arch}.pt")
        save_checkpoint(model, model=net, model_name=arch, model_args={}, pre=pre, config=cfg.to_dict(),
                        epoch=0, best_val_acc=0.0)
    video_model = model if a.model else "default"  # labels in the video rows need a trained model
    if a.videos_only:
        video_rows(video_model, a.video_threads, a.video_rounds, every, a.video_seconds)
        return
    import importlib.util
    import sys

    import cv2
    fer_python = a.fer_python or (sys.executable if importlib.util.find_spec("fer") else None)
    torch.set_num_threads(a.threads)
    cv2.setNumThreads(a.threads)
    if a.photos_only:
        print(f"model {model}, {a.threads} thread(s), torch {torch.__version__}")
        against_fer(fer_python, model, photo_folders(tmp), a.threads, a.rounds)
        return
    ckpt = load_checkpoint(model)
    net, pre = model_from_checkpoint(ckpt)
    onnx_path = tmp / "model.onnx"
    export_onnx(model, onnx_path, data=a.data)
    faces = load_fer2013(a.data).images[:256]

    if a.folder:
        photos = Path(a.folder)
    else:
        (tmp / "photos").mkdir()
        photos = astronaut_folder(tmp / "photos")
    crops = faces_folder(Path(tempfile.mkdtemp(dir=tmp)), faces[:128])
    print(f"model {ckpt['model']} ({sum(p.numel() for p in net.parameters()):,} params), "
          f"{a.threads} thread(s), torch {torch.__version__}\n")
    print("| end to end (`Predictor.predict(folder)`) | model | images | faces | images/s | faces/s |")
    print("|---|---|---:|---:|---:|---:|")
    results = {}
    for what, folder, det, backends in (
            ("photos 512x512, mtcnn detector (default)", photos, "mtcnn", ("PyTorch", "ONNX Runtime")),
            ("photos 512x512, haar detector", photos, "haar", ("PyTorch",)),
            ("photos 512x512, lbp detector", photos, "lbp", ("PyTorch",)),
            ("FER2013 crops 48x48, --detector none", crops, "none", ("PyTorch", "ONNX Runtime"))):
        for name, m in (("PyTorch", model), ("ONNX Runtime", str(onnx_path))):
            if name not in backends:
                continue
            r = results[det, name] = end_to_end(m, folder, det, 64, a.rounds if det == "mtcnn" else 1)
            print(f"| {what} | {name} | {r['images']} | {r['faces']} | {r['images'] / r['s']:.1f} | "
                  f"{r['faces'] / r['s']:.1f} |", flush=True)
    # what detecting a folder's photos in groups (one batched MTCNN pass per group) is worth: one at a time
    import ferlab.inference.predictor as predictor_module
    grouped, predictor_module.DETECT_FRAMES = predictor_module.DETECT_FRAMES, 1
    r = end_to_end(model, photos, "mtcnn", 64, a.rounds)
    predictor_module.DETECT_FRAMES = grouped
    print(f"| photos 512x512, mtcnn, each photo detected alone (not in groups of {grouped}) | PyTorch | "
          f"{r['images']} | {r['faces']} | {r['images'] / r['s']:.1f} | {r['faces'] / r['s']:.1f} |", flush=True)

    against_fer(fer_python, model, photo_folders(tmp / "sizes", None if a.folder else photos), a.threads, a.rounds)

    # int8 needs Training faces for its calibration, and trained weights to pass its label-agreement check
    int8_path = (export_onnx(model, tmp / "model.int8.onnx", data=a.data, int8=True)["path"]
                 if a.data and not untrained else None)
    print("\n| classifier only (uint8 faces in, probabilities out) | threads | batch 1 (ms) | batch 64 (ms/face) | "
          "faces/s |")
    print("|---|---:|---:|---:|---:|")
    pixels = to_model_pixels(faces[:64], pre)
    fast = fold_batchnorm(net.to(memory_format=torch.channels_last))  # as the Predictor runs it on the CPU
    for threads in sorted({a.threads, os.cpu_count() or 1}):
        torch.set_num_threads(threads)

        # all from uint8 faces at the model's size: the ONNX graphs hold the preprocessing, PyTorch runs it first
        def fp32(x):
            return fast(to_model_input(x, pre).contiguous(memory_format=torch.channels_last)).softmax(1)

        def bf16(x):
            with torch.autocast("cpu", dtype=torch.bfloat16):
                return fast(to_model_input(x, pre).contiguous(memory_format=torch.channels_last)).float().softmax(1)

        backends = {"PyTorch fp32 (channels-last, BatchNorm folded, as the Predictor runs it)": fp32,
                    "PyTorch bf16 autocast": bf16,
                    "ONNX Runtime": OnnxClassifier(onnx_path, threads=threads)}
        if int8_path:
            backends["ONNX Runtime int8 (`ferlab export --int8`)"] = OnnxClassifier(int8_path, threads=threads)
        with torch.no_grad():
            for name, fn in backends.items():
                one = latency(fn, pixels[:1], a.repeats)
                many = latency(fn, pixels, max(3, a.repeats // 5))
                print(f"| {name} | {threads} | {1000 * one:.2f} | {1000 * many / 64:.3f} | {64 / many:.0f} |",
                      flush=True)

    video_rows(video_model, a.video_threads, a.video_rounds, every, a.video_seconds)


if __name__ == "__main__":
    main()
