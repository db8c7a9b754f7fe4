"""ONNX export that stands alone: preprocessing inside the graph, and metadata that tells a plain ONNX Runtime
user the rest; checked against PyTorch before it is kept.

The graph maps uint8 grey faces (N, S, S) at the model's input size S to probabilities, with a dynamic batch
axis: scaling to 0..1, per-face standardisation where the model uses it, channel repeat, mean/std
normalisation, the network, the fitted temperature and the softmax all happen inside, exactly as
`to_model_input` and the calibrated checkpoint do them. What stays outside is what ferlab does before that
(the square crop, eye alignment, grey conversion, resizing) and flip TTA, which averages two runs of the
graph; the metadata describes exactly those (`ferlab.preprocess`, `ferlab.tta`) and lists what the graph
holds under `ferlab.graph`, so nobody normalises twice. `model_version` is derived from the checkpoint's
bytes: one checkpoint always exports the same number, another checkpoint a different one.
"""
from __future__ import annotations

import contextlib
import copy
import io
import json
import logging
import os
import warnings
from pathlib import Path

import numpy as np
import torch

from .._version import __version__
from .._optional import need
from ..data import USAGES, load_fer2013
from ..engine.checkpoint import checkpoint_path, file_sha256, load_checkpoint, model_from_checkpoint
from ..weights import resolve_model
from .detect import FER_MARGIN
from .preprocess import Preprocess, to_model_input, to_model_pixels

PARITY_TOL = 1e-4
INPUT, OUTPUT = "faces", "probs"
REAL = "real FER2013"  # the check set of real faces, which the int8 export is held to
# int8: activation ranges calibrated on this many Training faces, each range the CALIBRATION_PERCENTILE of the
# values seen (chosen on PublicTest by bench/int8_calibration.py, with 7-bit weights: the label kept on 98.69% /
# 98.75% of its faces for the shipped default / robust model, against 98.41% / 98.66% at the 99.99th percentile and
# 98.02% / 98.44% with the plain min-max ranges); the file is refused unless its label is the PyTorch model's on at
# least INT8_AGREEMENT of the real check faces
CALIBRATION_FACES = 1024
CALIBRATION_PERCENTILE = 99.999
INT8_AGREEMENT = 0.9
# the Predictor turns faces upright by their eyes by default (predictor.ALIGN, which this module cannot import:
# predictor imports it); a test holds the two equal
ALIGNED_BY_DEFAULT = True


class _Deployable(torch.nn.Module):
    """uint8 grey faces (N, S, S) -> probabilities: preprocessing, network and softmax in one graph."""

    def __init__(self, model: torch.nn.Module, pre: Preprocess):
        super().__init__()
        self.model, self.pre = model, pre

    def forward(self, faces):
        return self.model(to_model_input(faces, self.pre)).softmax(1)


class _MatmulAdaptiveAvgPool2d(torch.nn.Module):
    """AdaptiveAvgPool2d as two matrix products, which ONNX exports for any size ratio.

    The TorchScript exporter refuses adaptive pooling whose output size does not divide the input size
    (vgg_s at 32 px pools a 2x2 map to 3x3); the pooling matrices below give the same numbers.
    """

    def __init__(self, output_size):
        super().__init__()
        self.out = (output_size, output_size) if isinstance(output_size, int) else tuple(output_size)

    @staticmethod
    def _matrix(n_in: int, n_out: int, like: torch.Tensor) -> torch.Tensor:
        m = torch.zeros(n_out, n_in, dtype=like.dtype)
        for i in range(n_out):
            lo, hi = (i * n_in) // n_out, -((-(i + 1) * n_in) // n_out)
            m[i, lo:hi] = 1.0 / (hi - lo)
        return m

    def forward(self, x):
        h, w = int(x.shape[-2]), int(x.shape[-1])
        oh, ow = (h if self.out[0] is None else self.out[0]), (w if self.out[1] is None else self.out[1])
        return self._matrix(h, oh, x) @ x @ self._matrix(w, ow, x).T


def metadata(ckpt: dict, pre: Preprocess) -> dict[str, str]:
    """The export's metadata (`ferlab.*` keys): what the graph takes and gives, the steps a consumer does
    before it (`ferlab.preprocess`, only those: everything in `ferlab.graph` is inside), flip TTA, the
    temperature, the class names, the model and the ferlab that wrote it."""
    s = pre.input_size
    temperature, bias = ckpt.get("temperature"), ckpt.get("logit_bias")
    calibration = ckpt.get("calibration") or {}
    graph = ["x / 255"]
    if pre.standardize:
        graph.append("per-face standardisation: (x - mean(x)) / (std(x, ddof=1) + 0.001), over each face's pixels")
    if pre.in_channels > 1:
        graph.append(f"the grey channel repeated to {pre.in_channels} channels")
    graph += [f"(x - {list(pre.mean)}) / {list(pre.std)}", f"the network ({ckpt['model']})"]
    if temperature:
        graph.append(f"{'(logits + logit_bias)' if bias is not None else 'logits'} / temperature {temperature:.6g}")
    graph.append("softmax")
    crop = {
        "box": "square",
        "rule": "the face detector's box made square about its centre, side = the box's longer side "
                + ("(no margin: tight, as FER2013's crops)" if FER_MARGIN == 0 else
                   f"grown by {FER_MARGIN:g} of it on every side") + ", capped at the picture's shorter side "
                "and shifted to lie inside the picture",
        "align_eyes": ALIGNED_BY_DEFAULT,
        "align": "with a detector that finds the eyes (ferlab's default, MTCNN), the picture is first turned "
                 "about the box's centre so that the eyes are level (bilinear, edge pixels repeated) and the "
                 "box cut from the turned picture; with box-only detectors (haar, lbp) the box is cut as is",
    }
    preprocess = {
        "crop": crop,
        "grey": "L = R * 299/1000 + G * 587/1000 + B * 114/1000 (ITU-R 601-2 luma), rounded to uint8: exactly "
                "PIL's Image.convert('L'), which ferlab uses",
        "resize": f"to {s}x{s}, bilinear, antialiased when shrinking (torch interpolate, align_corners=False, "
                  f"antialias=True), rounded to uint8; PIL's Image.resize(({s}, {s}), Image.BILINEAR) gives the "
                  "same pixels within one grey level",
        "input": f"uint8 array (N, {s}, {s}), values 0-255, as input {INPUT!r}",
    }
    tta = ("not in the graph: ferlab averages each face's probabilities with those of its mirror image "
           "(faces[:, :, ::-1], a second run), by default (Predictor(tta=True), ferlab eval's 'flip')"
           + (f"; the temperature was fitted on those averages (tta {calibration['tta']!r})"
              if calibration.get("tta") else "") + ". One run per face is half the work and a little less accurate")
    return {
        "ferlab.version": __version__,
        "ferlab.model": ckpt["model"], "ferlab.model_args": json.dumps(ckpt["model_args"]),
        "ferlab.epoch": str(ckpt["epoch"]), "ferlab.best_val_acc": str(ckpt["best_val_acc"]),
        "ferlab.classes": json.dumps(list(ckpt["classes"])),
        "ferlab.input": f"{INPUT}: uint8 grey faces (N, {s}, {s}), the steps of ferlab.preprocess done; "
                        "everything in ferlab.graph is inside the graph",
        "ferlab.output": f"{OUTPUT}: (N, {len(ckpt['classes'])}) probabilities in the order of ferlab.classes",
        "ferlab.preprocess": json.dumps(preprocess),
        "ferlab.tta": tta,
        "ferlab.temperature": (f"{temperature:.6g}, inside the graph (the logits are divided by it before the "
                               "softmax): do not apply it again" if temperature else
                               "none fitted: the graph's softmax is of the plain logits"),
        "ferlab.graph": json.dumps({"steps": graph, **pre.to_dict(), "temperature": temperature,
                                    "logit_bias": None if bias is None else [float(b) for b in bias]}),
    }


def describe(meta: dict[str, str]) -> str:
    """The model's doc_string (ONNX Runtime: `get_modelmeta().description`): the metadata in a paragraph."""
    pre, graph = json.loads(meta["ferlab.preprocess"]), json.loads(meta["ferlab.graph"])
    crop = pre["crop"]
    return (f"ferlab {meta['ferlab.version']} facial expression model {meta['ferlab.model']}. "
            f"In: {meta['ferlab.input']}. Out: {meta['ferlab.output']}: {', '.join(json.loads(meta['ferlab.classes']))}. "
            f"Before the graph, as ferlab does: crop {crop['rule']}"
            + (f"; {crop['align']}" if crop["align_eyes"] else "") + f". Grey: {pre['grey']}. Resize: {pre['resize']}. "
            f"Inside the graph: {'; '.join(graph['steps'])}. Temperature: {meta['ferlab.temperature']}. "
            f"Flip TTA: {meta['ferlab.tta']}.")


def model_version(digest: str) -> int:
    """ModelProto.model_version from a checkpoint's SHA-256: its first 48 bits, a positive integer (exact in
    JSON and JavaScript too) that is the same for one checkpoint and differs between checkpoints."""
    return int(digest[:12], 16) or 1


def _exportable(model: torch.nn.Module) -> torch.nn.Module:
    """A copy of `model` with its adaptive average pools swapped for exportable matrix products."""
    model = copy.deepcopy(model)
    for module in list(model.modules()):
        for child_name, child in list(module.named_children()):
            if isinstance(child, torch.nn.AdaptiveAvgPool2d):
                setattr(module, child_name, _MatmulAdaptiveAvgPool2d(child.output_size))
    return model


def real_faces(data: str | Path | None, n: int = 64) -> np.ndarray:
    """`n` real FER2013 faces (uint8 (n, 48, 48)) spread evenly over the dataset, for parity checks."""
    return spread(_check_data(data).images, n)


def _check_data(data: str | Path | None):
    """FER2013 for the export's checks, or the reader's error saying what the export wanted it for."""
    try:
        return load_fer2013(data)
    except (ValueError, FileNotFoundError) as e:
        raise type(e)(f"export checks ONNX against PyTorch on real FER2013 faces from --data: {e}") from e


def spread(images: np.ndarray, n: int) -> np.ndarray:
    """`n` of `images` (all if fewer), evenly spread from the first to the last."""
    return images[np.linspace(0, len(images) - 1, min(n, len(images))).astype(int)]


def calibration_faces(fer, pre: Preprocess) -> np.ndarray:
    """The int8 export's calibration faces: CALIBRATION_FACES of `fer`'s Training faces (never a test face), spread
    over the split, as the float graph takes them (uint8 (n, S, S))."""
    train = fer.images[fer.usage == USAGES.index("Training")]
    return to_model_pixels(spread(train, CALIBRATION_FACES), pre).numpy()


def synthetic_faces(n: int, size: int, seed: int = 0) -> np.ndarray:
    """`n` face-like uint8 (n, size, size) images drawn from a fixed seed: a head of random brightness, eyes,
    brows and a mouth at random places and shapes, over a gradient, with noise. They exercise every part of
    the graph (per-face statistics, the whole grey range) without needing FER2013 at hand."""
    from PIL import Image, ImageDraw
    rng = np.random.default_rng(seed)
    out = np.empty((n, size, size), np.uint8)
    for i in range(n):
        bg = np.linspace(rng.uniform(0, 255), rng.uniform(0, 255), size)[None, :].repeat(size, 0)
        im = Image.fromarray(bg.astype(np.uint8))
        d = ImageDraw.Draw(im)
        c, r = size / 2 + rng.normal(0, size / 16, 2), size * rng.uniform(0.3, 0.45)
        skin, dark = int(rng.uniform(60, 230)), int(rng.uniform(0, 60))
        d.ellipse([c[0] - r * 0.8, c[1] - r, c[0] + r * 0.8, c[1] + r], fill=skin)
        for side in (-1, 1):
            ex, ey = c[0] + side * r * 0.35, c[1] - r * rng.uniform(0.15, 0.35)
            e = r * rng.uniform(0.08, 0.15)
            d.ellipse([ex - e, ey - e * rng.uniform(0.4, 1), ex + e, ey + e * rng.uniform(0.4, 1)], fill=dark)
            d.line([ex - 2 * e, ey - 2.5 * e + side * rng.normal(0, e), ex + 2 * e, ey - 2.5 * e], fill=dark)
        mw, my = r * rng.uniform(0.2, 0.5), c[1] + r * rng.uniform(0.35, 0.6)
        d.chord([c[0] - mw, my - mw * rng.uniform(0.1, 0.6), c[0] + mw, my + mw * rng.uniform(0.1, 0.6)],
                0 if rng.random() < 0.5 else 180, 360 if rng.random() < 0.5 else 180, fill=dark)
        out[i] = np.clip(np.asarray(im, np.float64) + rng.normal(0, rng.uniform(0, 12), (size, size)), 0, 255)
    return out


def export_onnx(checkpoint: str | Path, out: str | Path | None = None, data: str | Path | None = None,
                opset: int = 17, n_check: int = 64, int8: bool = False) -> dict:
    """Write `checkpoint` (run folder, .pt or "default") as a standalone ONNX file and verify it.

    The check runs `n_check` synthetic faces, plus `n_check` real FER2013 faces when `data` (else
    $FERLAB_DATA) is given, through both runtimes at batch 1 and at full batch; if any probability differs
    by more than PARITY_TOL the file is removed and RuntimeError raised. With `int8`, that checked graph is
    then quantized (`quantize_int8`, which needs `data` for its calibration faces) and written instead.
    Returns a report dict.
    """
    onnx = need("onnx", "export", "ferlab export")  # both checked before any work: the check runs the export
    need("onnxruntime", "export", "ferlab export")
    src = resolve_model(checkpoint)
    ckpt = load_checkpoint(src)
    model, pre = model_from_checkpoint(ckpt)
    suffix = ".int8.onnx" if int8 else ".onnx"
    out = Path(out) if out else (src / f"model{suffix}" if src.is_dir() else src.with_suffix(suffix))
    checks = {"synthetic": synthetic_faces(n_check, pre.input_size)}
    data = data or os.environ.get("FERLAB_DATA") or None
    if int8 and not data:
        raise ValueError("an int8 export calibrates its activation ranges on FER2013 Training faces: pass --data "
                         "(or set $FERLAB_DATA)")
    fer = _check_data(data) if data else None  # read before anything is written, so a bad path fails cleanly
    if fer is not None:
        checks[REAL] = to_model_pixels(spread(fer.images, n_check), pre).numpy()
    with torch.no_grad():  # PyTorch's answers, which the float graph and the int8 one are held to
        want = {name: model.eval()(to_model_input(faces, pre)).softmax(1).numpy() for name, faces in checks.items()}
    final, out = out, (out.with_name(out.stem + ".fp32.tmp.onnx") if int8 else out)

    deployable = _Deployable(_exportable(model).eval(), pre)
    with warnings.catch_warnings():
        # the TorchScript exporter: the torch.export one needs onnxscript, which ferlab does not depend on
        warnings.simplefilter("ignore", DeprecationWarning)
        warnings.simplefilter("ignore", torch.jit.TracerWarning)  # the pools' sizes are fixed by design
        try:
            torch.onnx.export(deployable, (torch.as_tensor(checks["synthetic"][:2]),), str(out), dynamo=False,
                              opset_version=opset, input_names=[INPUT], output_names=[OUTPUT],
                              dynamic_axes={INPUT: {0: "batch"}, OUTPUT: {0: "batch"}})
        except Exception:
            out.unlink(missing_ok=True)
            raise
    proto = onnx.load(str(out))
    meta = metadata(ckpt, pre)
    for k, v in meta.items():
        proto.metadata_props.add(key=k, value=v)
    digest = file_sha256(checkpoint_path(src))
    proto.metadata_props.add(key="ferlab.checkpoint_sha256", value=digest)
    proto.model_version = model_version(digest)
    proto.doc_string = describe(meta)
    onnx.checker.check_model(proto)
    onnx.save(proto, str(out))

    try:
        runtime = OnnxClassifier(out)
        diffs = {name: parity(want[name], runtime, faces) for name, faces in checks.items()}
    except Exception:
        out.unlink(missing_ok=True)
        raise
    worst = max(diffs.values())
    if not worst <= PARITY_TOL:
        out.unlink(missing_ok=True)
        raise RuntimeError(f"ONNX export of {checkpoint} disagrees with PyTorch: max |p_onnx - p_torch| = "
                           + ", ".join(f"{d:.2e} on {len(checks[k])} {k} faces" for k, d in diffs.items())
                           + f" (allowed {PARITY_TOL:.0e}); nothing written")
    report = {"path": str(out), "faces_checked": {k: len(v) for k, v in checks.items()}, "max_abs_diff": diffs,
              "opset": opset, "bytes": out.stat().st_size}
    if int8:
        try:
            report["int8"] = quantize_int8(out, final, calibration_faces(fer, pre), checks, want)
        finally:
            out.unlink(missing_ok=True)
        report.update(path=str(final), bytes=final.stat().st_size)
    return report


def quantize_int8(src: Path, out: Path, calib: np.ndarray, checks: dict[str, np.ndarray],
                  want: dict[str, np.ndarray], percentile: float | None = CALIBRATION_PERCENTILE) -> dict:
    """`src` (a checked float export) -> `out` with int8 convolutions, matrix products and pools (ONNX Runtime
    static quantization, QDQ form: int8 weights per output channel in 7 bits, uint8 activations), the
    preprocessing left in float. Activation ranges are calibrated on the uint8 faces `calib` (the export gives it
    Training faces spread over the split, never test faces): each the `percentile` of the values seen, or their
    extremes (None).
    Refused (RuntimeError, nothing written) unless its label is the one in PyTorch's probabilities `want` on
    INT8_AGREEMENT of the REAL `checks` faces. The agreement on the other sets (the synthetic faces) is reported,
    not held to: drawn cartoons far from any training face, where the network's top two classes lie close (median
    margin 0.25) and a label flips with the calibration (86% to 98% kept for one network across calibrations whose
    PublicTest agreement differs by 0.65 points at most). Returns the agreements and the largest probability
    difference."""
    from onnxruntime.quantization import (CalibrationDataReader, CalibrationMethod, QuantFormat, QuantType,
                                          quantize_static)

    # batches of one size (the percentile calibrator stacks them): the largest divisor of the count up to 64
    step = max(b for b in range(1, 65) if len(calib) % b == 0)

    class Batches(CalibrationDataReader):
        def __init__(self):
            self.batches = iter([{INPUT: calib[i:i + step]} for i in range(0, len(calib), step)])

        def get_next(self):
            return next(self.batches, None)

    from onnxruntime.quantization.shape_inference import quant_pre_process
    onnx = need("onnx", "export", "ferlab export")
    prepared = out.with_name(out.stem + ".prep.tmp.onnx")
    try:
        # ONNX Runtime's quantization tool logs advice and notes on the root logger, and prints its calibrator's
        # progress
        with _quiet_root_logger(), contextlib.redirect_stdout(io.StringIO()):
            # its advised preparation (shape inference, graph optimisation), then the quantization of every
            # operator it can run in int8, not only the convolutions and matrix products: the pools then stay
            # in int8 too, without a dequantize / quantize pair around each (1317 against 1151 faces/s for the
            # shipped model on one thread)
            quant_pre_process(str(src), str(prepared))
            # 7-bit weights (reduce_range): on a CPU without VNNI (AVX2, plain AVX-512) ONNX Runtime multiplies
            # uint8 activations by int8 weights with VPMADDUBSW, whose 16-bit pair sums saturate with 8-bit
            # weights; with 7-bit ones they cannot, so every CPU computes the same integers. Measured on an AVX2
            # EPYC, the shipped default on PrivateTest (99.99th-percentile ranges): the label kept on 92.11% of the
            # faces with 8-bit weights, 98.61% with 7-bit ones, at the same speed (docs/inference.md)
            quantize_static(str(prepared), str(out), Batches(), quant_format=QuantFormat.QDQ, per_channel=True,
                            reduce_range=True, activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8,
                            **({"calibrate_method": CalibrationMethod.MinMax} if percentile is None else
                               {"calibrate_method": CalibrationMethod.Percentile,
                                "extra_options": {"CalibPercentile": percentile}}))
        proto, float_proto = onnx.load(str(out)), onnx.load(str(src))
        meta = {p.key: p.value for p in float_proto.metadata_props}
        meta["ferlab.quantized"] = (f"int8 (ONNX Runtime static quantization, QDQ, per-channel 7-bit weights), "
                                    f"calibrated on {len(calib)} FER2013 Training faces "
                                    + ("(min-max)" if percentile is None else f"(percentile {percentile})"))
        del proto.metadata_props[:]
        for k, v in meta.items():
            proto.metadata_props.add(key=k, value=v)
        # the quantization tool writes a fresh ModelProto: the float graph's version and description are kept
        proto.model_version, proto.doc_string = float_proto.model_version, float_proto.doc_string
        onnx.save(proto, str(out))
        runtime = OnnxClassifier(out)
        agree, worst = {}, 0.0
        for name, faces in checks.items():
            got = runtime(faces)
            agree[name] = float((got.argmax(1) == want[name].argmax(1)).mean())
            worst = max(worst, float(np.abs(got - want[name]).max()))
    except Exception:
        out.unlink(missing_ok=True)
        raise
    finally:
        prepared.unlink(missing_ok=True)
    if agree[REAL] < INT8_AGREEMENT:
        out.unlink(missing_ok=True)
        raise RuntimeError(f"int8 export disagrees with PyTorch too often: label agreement {agree[REAL]:.1%} on "
                           f"{len(checks[REAL])} {REAL} faces (needed {INT8_AGREEMENT:.0%}); nothing written")
    return {"calibration_faces": len(calib), "label_agreement": agree, "max_abs_diff": worst}


@contextlib.contextmanager
def _quiet_root_logger():
    """Root-logger warnings dropped for the duration (ONNX Runtime's quantization tool writes its advice there;
    a NullHandler keeps `logging.warning` from installing a console handler that would outlive the call)."""
    root = logging.getLogger()
    level, null = root.level, logging.NullHandler()
    root.addHandler(null)
    root.setLevel(logging.ERROR)
    try:
        yield
    finally:
        root.setLevel(level)
        root.removeHandler(null)


def parity(ref: np.ndarray, onnx_model: "OnnxClassifier", faces: np.ndarray) -> float:
    """Largest |probability difference| between PyTorch's probabilities `ref` (`to_model_input`, the network,
    softmax) and the ONNX graph's over the same uint8 `faces` (N, S, S), at batch 1 and at full batch."""
    full = onnx_model(faces)
    single = np.concatenate([onnx_model(faces[i:i + 1]) for i in range(len(faces))])
    return float(max(np.abs(full - ref).max(), np.abs(single - ref).max()))


class OnnxClassifier:
    """An exported model under ONNX Runtime: uint8 grey faces (N, S, S) -> probabilities (N, classes)."""

    takes_pixels = True  # the Predictor hands it resized uint8 faces, not normalised model input

    def __init__(self, path: str | Path, threads: int = 0):
        ort = need("onnxruntime", "export", "an .onnx model")
        opts = ort.SessionOptions()
        if threads:
            opts.intra_op_num_threads = threads
        try:
            self.session = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
        except Exception as e:  # ONNX Runtime's own error types: a truncated, corrupt or foreign file
            raise ValueError(f"{path}: not a readable ONNX model ({' '.join(str(e).split())}); export it again "
                             "with `ferlab export`") from None
        meta = self.session.get_modelmeta().custom_metadata_map
        if "ferlab.graph" not in meta and "ferlab.preprocess" in meta:
            raise ValueError(f"{path}: exported by an older ferlab, whose metadata did not say which steps are in "
                             "the graph: export it again with `ferlab export`")
        if "ferlab.graph" not in meta or "ferlab.classes" not in meta:
            raise ValueError(f"{path}: not a ferlab ONNX export (metadata ferlab.graph / ferlab.classes "
                             f"missing; found keys: {', '.join(sorted(meta)) or 'none'})")
        try:
            self.pre = Preprocess.from_dict(json.loads(meta["ferlab.graph"]))
            self.classes = tuple(json.loads(meta["ferlab.classes"]))
        except (KeyError, TypeError, ValueError) as e:
            raise ValueError(f"{path}: its ferlab metadata is damaged ({type(e).__name__}: {e}); export it again "
                             "with `ferlab export`") from None
        bad = nonfinite_weight(path)
        if bad:
            raise ValueError(f"{path}: weights not finite: {bad}; a model with such weights answers NaN, so ferlab "
                             "does not load it")
        self.name = meta.get("ferlab.model", Path(path).stem)
        (inp,) = self.session.get_inputs()
        if inp.type != "tensor(uint8)":
            raise ValueError(f"{path}: its input {inp.name!r} is {inp.type} {inp.shape}; expected uint8 grey faces "
                             "(N, S, S) with the preprocessing in the graph. It was exported by an older ferlab: "
                             "export it again with `ferlab export`")
        self.input = inp.name

    def __call__(self, faces) -> np.ndarray:
        x = faces.cpu().numpy() if torch.is_tensor(faces) else np.asarray(faces)
        return self.session.run([OUTPUT], {self.input: x.astype(np.uint8, copy=False)})[0]


def nonfinite_weight(path: str | Path) -> str | None:
    """The first floating-point weight (initializer) of an ONNX model holding NaN or infinity, in words, or None."""
    onnx = need("onnx", "export", "an .onnx model")
    from onnx import numpy_helper
    for init in onnx.load(str(path)).graph.initializer:
        w = numpy_helper.to_array(init)
        if np.issubdtype(w.dtype, np.floating) and not np.isfinite(w).all():
            return f"{init.name}: {int((~np.isfinite(w)).sum())} of {w.size} values are NaN or infinite"
    return None
