"""ONNX export: a standalone graph (uint8 faces in, preprocessing inside), parity with PyTorch on synthetic and real
faces, embedded metadata, dynamic batch, and the Predictor on .onnx."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from skimage import data as skdata
from test_predict import tiny_checkpoint

import ferlab
from ferlab.cli import main
from ferlab.data import DataError
from ferlab.engine import load_checkpoint, model_from_checkpoint
from ferlab.inference import onnx as ferlab_onnx
from ferlab.inference.faces import crop_faces, to_gray
from ferlab.inference.onnx import OnnxClassifier, export_onnx, synthetic_faces
from ferlab.inference.preprocess import Preprocess, to_model_input, to_model_pixels
from ferlab.weights import resolve_model


@pytest.fixture(scope="module")
def ckpt(fer_slice, tmp_path_factory) -> Path:
    return tiny_checkpoint(tmp_path_factory.mktemp("ckpt") / "tiny.pt", fer_slice)


@pytest.fixture(scope="module")
def exported(ckpt, fer_folder, tmp_path_factory) -> tuple[Path, dict]:
    out = tmp_path_factory.mktemp("onnx") / "tiny.onnx"
    return out, export_onnx(ckpt, out, data=fer_folder)


def test_export_matches_pytorch_on_real_faces(exported, ckpt, fer_slice):
    path, report = exported
    assert report["faces_checked"] == {"synthetic": 64, "real FER2013": 64}
    assert max(report["max_abs_diff"].values()) <= 1e-4
    # independently of export's own check: real uint8 faces straight into onnxruntime, no ferlab code on that side
    model, pre = model_from_checkpoint(load_checkpoint(ckpt))
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    for n in (1, 7, 50):
        faces = fer_slice["pixels"][-n:]
        with torch.no_grad():
            want = model(to_model_input(faces, pre)).softmax(1).numpy()
        (got,) = sess.run(None, {"faces": faces})
        assert got.shape == (n, 7)
        np.testing.assert_allclose(got, want, atol=1e-4)


def test_metadata_tells_a_plain_onnxruntime_user_what_ferlab_does(exported, ckpt, fer_slice):
    """Read through onnxruntime alone: the version (ferlab's, and a model_version derived from the checkpoint's bytes),
    the class names, what the graph holds, and only the steps outside it (crop, grey, resize) plus flip TTA; each
    claim checked against what ferlab does."""
    import hashlib

    from ferlab.inference.detect import FER_MARGIN
    from ferlab.inference.predictor import ALIGN
    path, _ = exported
    info = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).get_modelmeta()
    meta = info.custom_metadata_map
    c = load_checkpoint(ckpt)
    digest = hashlib.sha256(ckpt.read_bytes()).hexdigest()
    assert meta["ferlab.version"] == ferlab.__version__ and meta["ferlab.checkpoint_sha256"] == digest
    assert info.version == onnx.load(str(path)).model_version == int(digest[:12], 16) > 0
    assert json.loads(meta["ferlab.classes"]) == c["classes"] and meta["ferlab.model"] == "vgg_s"
    assert meta["ferlab.input"].startswith("faces: uint8 grey faces (N, 48, 48)")
    assert meta["ferlab.output"].startswith("probs: (N, 7) probabilities")
    (inp,) = onnx.load(str(path)).graph.input
    assert inp.name == "faces" and inp.type.tensor_type.elem_type == onnx.TensorProto.UINT8
    dims = inp.type.tensor_type.shape.dim
    assert dims[0].dim_param == "batch" and [d.dim_value for d in dims[1:]] == [48, 48]
    clf = OnnxClassifier(path)
    assert clf.pre == Preprocess.from_dict(c["preprocess"]) and list(clf.classes) == c["classes"]

    graph = json.loads(meta["ferlab.graph"])  # what is inside: the normalisation ferlab trains with
    assert Preprocess.from_dict(graph) == Preprocess.from_dict(c["preprocess"])
    assert graph["steps"][0] == "x / 255" and graph["steps"][-1] == "softmax" and graph["temperature"] is None
    assert meta["ferlab.temperature"].startswith("none fitted")  # this checkpoint was never calibrated
    pre = json.loads(meta["ferlab.preprocess"])  # what is outside, and nothing that is inside
    assert list(pre) == ["crop", "grey", "resize", "input"]
    assert not {"mean", "std", "standardize", "temperature"} & set(json.dumps(pre).replace('"', " ").split())
    assert pre["crop"]["box"] == "square" and pre["crop"]["align_eyes"] is ALIGN and FER_MARGIN == 0
    assert "no margin" in pre["crop"]["rule"] and "eyes are level" in pre["crop"]["align"]
    assert "L = R * 299/1000 + G * 587/1000 + B * 114/1000" in pre["grey"] and "48x48" in pre["resize"]
    assert meta["ferlab.tta"].startswith("not in the graph")
    for word in ("square", "eyes", "299/1000", "flip", "Temperature", "softmax", ferlab.__version__):
        assert word in info.description, word

    # the grey formula is ferlab's grey (PIL's fixed-point rounding may differ by one level)
    rgb = np.random.default_rng(0).integers(0, 256, (64, 64, 3), dtype=np.uint8)
    by_formula = np.round(rgb[..., 0] * 0.299 + rgb[..., 1] * 0.587 + rgb[..., 2] * 0.114)
    assert np.abs(to_gray(rgb) - by_formula).max() <= 1 and (to_gray(rgb) == by_formula).mean() > 0.95
    # flip TTA as the metadata says, outside the graph, is what ferlab's Predictor answers
    faces = fer_slice["pixels"][:6]
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    by_hand = (sess.run(None, {"faces": faces})[0] + sess.run(None, {"faces": faces[:, :, ::-1].copy()})[0]) / 2
    np.testing.assert_allclose(ferlab.Predictor(path, detector="none").predict_crops(list(faces)), by_hand, atol=1e-6)
    assert np.abs(sess.run(None, {"faces": faces})[0] - by_hand).max() > 1e-4  # the mirror does change the answer


def test_a_calibrated_checkpoint_exports_its_temperature_inside_the_graph(ckpt, exported, tmp_path):
    """The graph gives softmax(logits / T) for the checkpoint's fitted T, and the metadata says it is inside (so
    a consumer does not divide again); another checkpoint gets another model_version."""
    from ferlab.engine.checkpoint import write_checkpoint
    c = load_checkpoint(ckpt)
    calibrated = write_checkpoint(tmp_path / "calibrated.pt", {**c, "temperature": 2.5,
                                                               "calibration": {"tta": "flip", "temperature": 2.5}})
    out = tmp_path / "calibrated.onnx"
    export_onnx(calibrated, out, n_check=8)
    meta = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"]).get_modelmeta().custom_metadata_map
    assert meta["ferlab.temperature"].startswith("2.5, inside the graph")
    assert json.loads(meta["ferlab.graph"])["temperature"] == 2.5 and "logits / temperature 2.5" in meta["ferlab.graph"]
    assert "fitted on those averages" in meta["ferlab.tta"]
    faces = synthetic_faces(8, 48)
    plain, pre = model_from_checkpoint(c, calibrated=False)
    with torch.no_grad():
        logits = plain(to_model_input(faces, pre))
    np.testing.assert_allclose(OnnxClassifier(out)(faces), (logits / 2.5).softmax(1).numpy(), atol=1e-5)
    assert not np.allclose(OnnxClassifier(out)(faces), logits.softmax(1).numpy(), atol=1e-3)
    assert 0 < onnx.load(str(out)).model_version != onnx.load(str(exported[0])).model_version


def test_readme_onnxruntime_snippet_gives_ferlabs_answer(exported, ckpt, tmp_path, monkeypatch, capsys):
    """The README's plain ONNX Runtime lines, run as written on an export and a square face crop bigger than the
    model's input: the probabilities are those of ferlab's Predictor (flip TTA) on the same file, within the
    rounding of the resized pixels to whole grey levels."""
    import re
    import shutil

    from PIL import Image
    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    block = readme[readme.index("With plain ONNX Runtime"):]
    block = block[block.index("\n\n    ") + 2:]
    code = "\n".join(line[4:] for line in block.split("\n\n")[0].splitlines())
    assert re.search(r'InferenceSession\("fer.onnx"\)', code) and "face.jpg" in code, code
    path, _ = exported
    shutil.copy(path, tmp_path / "fer.onnx")
    photo = skdata.astronaut()
    (face,) = ferlab.Predictor(ckpt, detector="cascade").predict(photo)
    x, y, w, h = face["box"]
    assert w == h > 48  # square, and resized on the way in
    Image.fromarray(photo[y:y + h, x:x + w]).save(tmp_path / "face.jpg", quality=95)
    monkeypatch.chdir(tmp_path)
    scope = {}
    exec(code, scope)
    printed = capsys.readouterr().out.strip()
    (want,) = ferlab.Predictor(ckpt, detector="none").predict(str(tmp_path / "face.jpg"))
    classes = scope["classes"]
    assert printed == classes[int(scope["probs"][0].argmax())]
    np.testing.assert_allclose(scope["probs"][0], [want["probs"][k] for k in classes], atol=3e-3)


def test_predictor_on_onnx_equals_pytorch(exported, ckpt, fer_slice):
    """Faces at the model's size: the same probabilities within 1e-4. Faces the Predictor must resize (a photo):
    the ONNX path gets them rounded to whole grey levels, as any consumer would, so the probabilities may move
    by that rounding (allowed 2e-3) but not the label, and ONNX on those rounded pixels equals PyTorch on them."""
    path, _ = exported
    faces = list(fer_slice["pixels"][::40])
    for detector, inputs, tol in (("none", faces, 1e-4), ("cascade", [skdata.astronaut()], 2e-3)):
        p_onnx = ferlab.Predictor(path, detector=detector, batch_size=8)
        p_torch = ferlab.Predictor(ckpt, detector=detector, batch_size=8)
        assert p_onnx.classes == p_torch.classes and p_onnx.preprocess == p_torch.preprocess
        for image in inputs:
            a, b = p_onnx.predict(image), p_torch.predict(image)
            assert len(a) == len(b) >= 1
            for fa, fb in zip(a, b):
                assert fa["box"] == fb["box"] and fa["label"] == fb["label"]
                assert [fa["probs"][k] for k in p_onnx.classes] == pytest.approx(
                    [fb["probs"][k] for k in p_onnx.classes], abs=tol)
    # the photo's face crop, rounded as the ONNX path rounds it: the graph itself is exact
    photo = skdata.astronaut()
    det = ferlab.Predictor(ckpt, detector="cascade")
    (crop,) = crop_faces(to_gray(photo), det.detector(to_gray(photo), photo))
    model, pre = model_from_checkpoint(load_checkpoint(ckpt))
    pixels = to_model_pixels(crop[None], pre)
    with torch.no_grad():
        want = model.eval()(to_model_input(pixels, pre)).softmax(1).numpy()
    np.testing.assert_allclose(OnnxClassifier(path)(pixels), want, atol=1e-4)


def test_cli_export_and_predict_with_onnx(ckpt, fer_folder, fer_slice, tmp_path, capsys):
    out = tmp_path / "m.onnx"
    assert main(["export", str(ckpt), "--format", "onnx", "-o", str(out), "--data", str(fer_folder)]) == 0
    assert "real FER2013 faces" in capsys.readouterr().out and out.exists()
    face = tmp_path / "face.jpg"
    face.write_bytes(fer_slice["jpeg"][0])
    for model in (out, ckpt):
        assert main(["predict", str(face), "--model", str(model), "--detector", "none", "--no-progress"]) == 0
    a, b = (json.loads(line) for line in capsys.readouterr().out.splitlines())
    assert a["probs"] == pytest.approx(b["probs"], abs=1e-4)


def test_export_without_data_checks_synthetic_faces(ckpt, fer_slice, tmp_path, monkeypatch):
    """No FER2013 at hand: export still checks parity, on faces it draws itself, and the file is right on real
    faces it never saw."""
    monkeypatch.delenv("FERLAB_DATA", raising=False)
    report = export_onnx(ckpt, tmp_path / "x.onnx")
    assert report["faces_checked"] == {"synthetic": 64} and report["max_abs_diff"]["synthetic"] <= 1e-4
    model, pre = model_from_checkpoint(load_checkpoint(ckpt))
    faces = fer_slice["pixels"][::9]
    with torch.no_grad():
        want = model(to_model_input(faces, pre)).softmax(1).numpy()
    np.testing.assert_allclose(OnnxClassifier(tmp_path / "x.onnx")(faces), want, atol=1e-4)


def test_synthetic_faces_are_fixed_and_varied():
    a, b = synthetic_faces(32, 48), synthetic_faces(32, 48)
    np.testing.assert_array_equal(a, b)
    assert a.dtype == np.uint8 and a.shape == (32, 48, 48)
    assert a.min() < 30 and a.max() > 225  # the whole grey range
    assert np.std(a.reshape(32, -1).mean(1)) > 15 and np.std(a.reshape(32, -1).std(1)) > 5  # brightness, contrast
    assert not np.array_equal(synthetic_faces(4, 48, seed=1), a[:4])


def test_export_with_a_bad_data_path_fails_before_writing(ckpt, tmp_path):
    with pytest.raises((DataError, FileNotFoundError, ValueError), match="real FER2013 faces from --data"):
        export_onnx(ckpt, tmp_path / "x.onnx", data=tmp_path / "nowhere.csv")
    assert not (tmp_path / "x.onnx").exists()


def test_export_fails_and_removes_the_file_when_parity_fails(ckpt, fer_folder, tmp_path, monkeypatch):
    monkeypatch.setattr(ferlab_onnx, "PARITY_TOL", -1.0)  # no real export can pass: the failure path runs
    with pytest.raises(RuntimeError, match="disagrees with PyTorch"):
        export_onnx(ckpt, tmp_path / "x.onnx", data=fer_folder, n_check=4)
    assert not (tmp_path / "x.onnx").exists()


@pytest.mark.filterwarnings("ignore::DeprecationWarning")
def test_onnx_without_ferlab_metadata_is_refused(tmp_path):
    path = tmp_path / "plain.onnx"
    torch.onnx.export(torch.nn.Linear(4, 2), (torch.zeros(1, 4),), str(path), dynamo=False)
    with pytest.raises(ValueError, match="not a ferlab ONNX export"):
        ferlab.Predictor(path)


def test_export_default_names_the_missing_weights(monkeypatch, tmp_path, capsys):
    import ferlab.weights as weights
    monkeypatch.setattr(weights, "DEFAULT_WEIGHTS", tmp_path / "default.pt")
    assert main(["export", "default"]) == 2
    assert str(tmp_path / "default.pt") in capsys.readouterr().err


def test_shipped_default_model_exports_and_predicts_the_same(fer_folder, fer_slice, tmp_path):
    """The shipped model exports with its temperature; where its adaptive pool's output size does not divide
    its input (vgg_s at 32 px maps 2x2 to 3x3) export swaps in an equivalent matrix product; parity holds."""
    out = tmp_path / "default.onnx"
    report = export_onnx("default", out, data=fer_folder)
    assert max(report["max_abs_diff"].values()) <= 1e-4 and out.exists()
    pre = load_checkpoint("default")["preprocess"]
    assert [d.dim_value for d in onnx.load(str(out)).graph.input[0].type.tensor_type.shape.dim[1:]] == [
        pre["input_size"], pre["input_size"]]
    faces = list(fer_slice["pixels"][:12])
    torch_probs = ferlab.Predictor("default", detector="none").predict_crops(faces)
    onnx_probs = ferlab.Predictor(str(out), detector="none").predict_crops(faces)
    assert torch_probs.shape == (12, 7)
    np.testing.assert_allclose(onnx_probs, torch_probs, atol=1e-4)
    np.testing.assert_array_equal(onnx_probs.argmax(1), torch_probs.argmax(1))


def test_adaptive_pool_swap_is_exact_for_any_ratio():
    for size_in, size_out in ((2, 3), (5, 3), (7, 4), (12, 4), (3, 3)):
        x = torch.randn(2, 3, size_in, size_in + 1)
        torch.testing.assert_close(ferlab_onnx._MatmulAdaptiveAvgPool2d(size_out)(x),
                                   torch.nn.functional.adaptive_avg_pool2d(x, size_out))


@pytest.mark.filterwarnings("ignore::DeprecationWarning")
def test_an_export_without_the_preprocessing_inside_is_refused(ckpt, tmp_path):
    """A file from an older ferlab took normalised float input; fed uint8 faces it would be silently wrong."""
    model, pre = model_from_checkpoint(load_checkpoint(ckpt))
    path = tmp_path / "old.onnx"
    torch.onnx.export(model.eval(), (torch.zeros(1, 1, 48, 48),), str(path), dynamo=False, input_names=["input"])
    proto = onnx.load(str(path))
    proto.metadata_props.add(key="ferlab.graph", value=json.dumps(pre.to_dict()))
    proto.metadata_props.add(key="ferlab.classes", value=json.dumps(list(load_checkpoint(ckpt)["classes"])))
    onnx.save(proto, str(path))
    with pytest.raises(ValueError, match=r"expected uint8 grey faces .* export it again"):
        OnnxClassifier(path)
    # an export whose metadata (ferlab.preprocess, the normalisation the graph already did) predates ferlab.graph
    proto.metadata_props[0].key = "ferlab.preprocess"
    onnx.save(proto, str(path))
    with pytest.raises(ValueError, match=r"older ferlab, whose metadata did not say which steps are in the graph"):
        OnnxClassifier(path)


def test_cli_export_default_without_data(tmp_path, monkeypatch, capsys):
    monkeypatch.delenv("FERLAB_DATA", raising=False)
    out = tmp_path / "default.onnx"
    assert main(["export", "default", "-o", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "on 64 synthetic faces" in printed and "real" not in printed and out.exists()


def test_resized_crops_reach_onnx_as_rounded_pixels(fer_slice):
    """Crops larger than the model's input are resized as `to_model_input` resizes them, then rounded: the
    rounding moves no pixel by more than half a grey level."""
    pre = Preprocess(input_size=32)
    big = np.kron(fer_slice["pixels"][:4], np.ones((3, 3), np.uint8))  # 144 x 144 crops
    px = to_model_pixels(big, pre)
    assert px.dtype == torch.uint8 and tuple(px.shape) == (4, 32, 32)
    exact = (to_model_input(big, Preprocess(input_size=32, mean=(0.0,), std=(1.0,))) * 255)[:, 0]
    assert (px.float() - exact).abs().max() <= 0.5 + 1e-4


def test_an_onnx_model_cannot_explain_and_says_why(exported, fer_slice):
    path, _ = exported
    with pytest.raises(ValueError, match="needs the PyTorch model's gradients"):
        ferlab.Predictor(path, detector="none").explain(fer_slice["pixels"][0])


def test_int8_export_is_calibrated_on_training_faces_and_keeps_the_labels(fer_folder, fer_slice, tmp_path, capfd):
    """The shipped model quantized to int8: one standalone file (uint8 faces in, int8 convolutions as QDQ),
    calibrated on the Training faces only, saying so in its metadata, and giving PyTorch's label on most real
    test faces when run straight through onnxruntime. Quiet: no log lines, no temp files left."""
    import logging
    handlers = list(logging.getLogger().handlers)
    out = tmp_path / "default.int8.onnx"
    report = export_onnx("default", out, data=fer_folder, int8=True)
    assert capfd.readouterr().err == "" and logging.getLogger().handlers == handlers
    assert sorted(p.name for p in tmp_path.iterdir()) == [out.name]
    q = report["int8"]
    assert q["calibration_faces"] == sum(u == "Training" for u in fer_slice["usage"])
    # held to the real faces; the synthetic ones' agreement is reported beside it
    assert set(q["label_agreement"]) == {"synthetic", "real FER2013"}
    assert q["label_agreement"]["real FER2013"] >= ferlab_onnx.INT8_AGREEMENT
    proto = onnx.load(str(out))
    ops = {n.op_type for n in proto.graph.node}
    assert {"QuantizeLinear", "DequantizeLinear"} <= ops
    weights = [onnx.numpy_helper.to_array(t) for t in proto.graph.initializer if t.data_type == onnx.TensorProto.INT8]
    assert weights
    # 7-bit weights: a CPU without VNNI multiplies uint8 activations by them without saturating its 16-bit pair
    # sums, so every CPU computes the same integers (8-bit weights kept 92% of PrivateTest labels on an AVX2 core)
    assert max(int(np.abs(w.astype(np.int16)).max()) for w in weights) <= 64
    meta = {p.key: p.value for p in proto.metadata_props}
    assert f"Training faces (percentile {ferlab_onnx.CALIBRATION_PERCENTILE})" in meta["ferlab.quantized"]
    assert "7-bit" in meta["ferlab.quantized"]
    assert json.loads(meta["ferlab.classes"])[3] == "happy"
    assert proto.model_version > 0 and "flip" in proto.doc_string  # the float graph's, kept through quantization
    test = np.array([u != "Training" for u in fer_slice["usage"]])
    faces = fer_slice["pixels"][test]
    model, pre = model_from_checkpoint(load_checkpoint(resolve_model("default")))
    with torch.no_grad():
        want = model(to_model_input(faces, pre)).softmax(1).numpy()
    (got,) = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"]).run(None, {"faces": faces})
    assert (got.argmax(1) == want.argmax(1)).mean() >= 0.9
    assert 1e-4 < np.abs(got - want).max() < 0.3  # quantized, so not the float numbers, but close


def test_int8_export_needs_training_faces_and_is_refused_when_labels_change(fer_folder, tmp_path, monkeypatch):
    monkeypatch.delenv("FERLAB_DATA", raising=False)
    with pytest.raises(ValueError, match="calibrates .* Training faces: pass --data"):
        export_onnx("default", tmp_path / "x.onnx", int8=True)
    monkeypatch.setattr(ferlab_onnx, "INT8_AGREEMENT", 1.01)  # no quantized model can pass: the refusal runs
    with pytest.raises(RuntimeError, match=r"int8 export disagrees with PyTorch too often: label agreement "
                                           r"\d+\.\d% on 8 real FER2013 faces \(needed 101%\); nothing written"):
        export_onnx("default", tmp_path / "x.onnx", data=fer_folder, int8=True, n_check=8)
    assert list(tmp_path.iterdir()) == []


def test_damaged_onnx_models_are_one_clear_line(exported, fer_slice, tmp_path, capsys):
    """A truncated export, bytes that are no ONNX at all, and an export with a NaN weight: `predict --model` says in
    one line which file and what is wrong (exit 2, no traceback) and the Predictor refuses it (never a NaN
    probability); `eval`, which scores PyTorch checkpoints, says so about any .onnx in one line too."""
    from PIL import Image
    path, _ = exported
    raw = path.read_bytes()
    (tmp_path / "truncated.onnx").write_bytes(raw[: len(raw) // 2])
    (tmp_path / "garbage.onnx").write_bytes(b"this is not an ONNX model at all")
    model = onnx.load(str(path))
    weight = next(t for t in model.graph.initializer if t.data_type == onnx.TensorProto.FLOAT and len(t.dims) == 4)
    values = onnx.numpy_helper.to_array(weight).copy()
    values.flat[0] = np.nan
    weight.CopyFrom(onnx.numpy_helper.from_array(values, weight.name))
    onnx.save(model, str(tmp_path / "nan.onnx"))
    Image.fromarray(fer_slice["pixels"][0]).save(tmp_path / "face.png")
    for name, said in (("truncated.onnx", "not a readable ONNX model"), ("garbage.onnx", "not a readable ONNX model"),
                       ("nan.onnx", f"weights not finite: {weight.name}: 1 of {values.size} values")):
        bad = tmp_path / name
        assert main(["predict", str(tmp_path / "face.png"), "--model", str(bad), "--detector", "none"]) == 2
        out, err = capsys.readouterr()
        assert out == "" and err.count("\n") == 1 and "Traceback" not in err, err
        assert err.startswith(f"ferlab predict: error: {bad}: ") and said in err, err
        with pytest.raises(ValueError, match=said):
            ferlab.Predictor(bad, detector="none")
        assert main(["eval", str(bad)]) == 2
        err = capsys.readouterr().err
        assert err == f"ferlab eval: error: {bad}: an ONNX export, which holds no PyTorch checkpoint: give the run " \
                      "folder or the .pt checkpoint it was exported from\n", err
    assert main(["predict", str(tmp_path / "face.png"), "--model", str(path), "--detector", "none"]) == 0
