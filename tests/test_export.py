"""ONNX export: parity with PyTorch on real faces, embedded metadata, dynamic batch, and the Predictor on .onnx."""
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
from ferlab.inference.onnx import OnnxClassifier, export_onnx
from ferlab.inference.preprocess import Preprocess, to_model_input


@pytest.fixture(scope="module")
def ckpt(fer_slice, tmp_path_factory) -> Path:
    return tiny_checkpoint(tmp_path_factory.mktemp("ckpt") / "tiny.pt", fer_slice)


@pytest.fixture(scope="module")
def exported(ckpt, fer_folder, tmp_path_factory) -> tuple[Path, dict]:
    out = tmp_path_factory.mktemp("onnx") / "tiny.onnx"
    return out, export_onnx(ckpt, out, data=fer_folder)


def test_export_matches_pytorch_on_real_faces(exported, ckpt, fer_slice):
    path, report = exported
    assert report["faces_checked"] == 64 and report["max_abs_diff"] <= 1e-4
    # independently of export's own check: real faces at several batch sizes through onnxruntime
    model, pre = model_from_checkpoint(load_checkpoint(ckpt))
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    for n in (1, 7, 50):
        x = to_model_input(fer_slice["pixels"][-n:], pre)
        with torch.no_grad():
            want = model(x).softmax(1).numpy()
        (got,) = sess.run(None, {"input": x.numpy()})
        assert got.shape == (n, 7)
        np.testing.assert_allclose(got, want, atol=1e-4)


def test_metadata_carries_preprocessing_and_classes(exported, ckpt):
    path, _ = exported
    meta = {p.key: p.value for p in onnx.load(str(path)).metadata_props}
    c = load_checkpoint(ckpt)
    assert Preprocess.from_dict(json.loads(meta["ferlab.preprocess"])) == Preprocess.from_dict(c["preprocess"])
    assert json.loads(meta["ferlab.classes"]) == c["classes"] and meta["ferlab.model"] == "vgg_s"
    dims = onnx.load(str(path)).graph.input[0].type.tensor_type.shape.dim
    assert dims[0].dim_param == "batch" and [d.dim_value for d in dims[1:]] == [1, 48, 48]
    clf = OnnxClassifier(path)
    assert clf.pre == Preprocess.from_dict(c["preprocess"]) and list(clf.classes) == c["classes"]


def test_predictor_on_onnx_equals_pytorch(exported, ckpt, fer_slice):
    path, _ = exported
    faces = list(fer_slice["pixels"][::40])
    for detector, inputs in (("none", faces), ("cascade", [skdata.astronaut()])):
        p_onnx = ferlab.Predictor(path, detector=detector, batch_size=8)
        p_torch = ferlab.Predictor(ckpt, detector=detector, batch_size=8)
        assert p_onnx.classes == p_torch.classes and p_onnx.preprocess == p_torch.preprocess
        for image in inputs:
            a, b = p_onnx.predict(image), p_torch.predict(image)
            assert len(a) == len(b) >= 1
            for fa, fb in zip(a, b):
                assert fa["box"] == fb["box"] and fa["label"] == fb["label"]
                assert [fa["probs"][k] for k in p_onnx.classes] == pytest.approx(
                    [fb["probs"][k] for k in p_onnx.classes], abs=1e-4)


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


def test_export_without_data_fails_clearly(ckpt, tmp_path, monkeypatch):
    monkeypatch.delenv("FERLAB_DATA", raising=False)
    c = load_checkpoint(ckpt)
    assert c["config"]["data"] is None
    with pytest.raises(DataError, match="real FER2013 faces"):
        export_onnx(ckpt, tmp_path / "x.onnx")
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
    assert report["max_abs_diff"] <= 1e-4 and out.exists()
    pre = load_checkpoint("default")["preprocess"]
    assert [d.dim_value for d in onnx.load(str(out)).graph.input[0].type.tensor_type.shape.dim[1:]] == [
        pre["in_channels"], pre["input_size"], pre["input_size"]]
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
