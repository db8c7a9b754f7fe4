"""The model registry: every registered model is tested the moment it is registered."""
from __future__ import annotations

import re

import pytest
import torch
import torch.nn as nn

from ferlab.models import count_params, create_model, list_models, model_defaults, register
from ferlab.models.registry import _REGISTRY

SIZES = [(1, 48), (3, 128)]  # FER2013 native, and the seed's grey-to-RGB 128 px
BACKWARD_LIMIT_128 = 5_000_000  # above this, a 128 px backward pass costs seconds on 2 cores: forward only


@pytest.fixture(autouse=True)
def _seeded_one_thread():
    # One thread: these tiny batches gain nothing from more, and the CI box has 2 busy cores.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    torch.manual_seed(0)
    yield
    torch.set_num_threads(threads)


@pytest.mark.parametrize("channels,size", SIZES, ids=[f"{c}x{s}" for c, s in SIZES])
@pytest.mark.parametrize("name", list_models())
def test_forward_backward(name, channels, size):
    model = create_model(name, in_channels=channels, input_size=size).train()
    x = torch.rand(2, channels, size, size)
    logits = model(x)
    assert logits.shape == (2, 7) and torch.isfinite(logits).all()
    if size == 48 or count_params(model) <= BACKWARD_LIMIT_128:
        nn.functional.cross_entropy(logits, torch.tensor([0, 6])).backward()
        for pname, p in model.named_parameters():
            assert p.grad is not None, f"{name}: {pname} got no gradient"
            assert torch.isfinite(p.grad).all(), f"{name}: {pname} has a non-finite gradient"
    if size == 48:
        model.eval()  # no dropout, running BN stats: the same input gives the same logits
        with torch.no_grad():
            assert torch.equal(model(x), model(x))


@pytest.mark.parametrize("name", list_models())
def test_num_classes_sizes_the_head(name):
    model = create_model(name, num_classes=3, in_channels=1, input_size=48).eval()
    with torch.no_grad():
        assert model(torch.rand(1, 1, 48, 48)).shape == (1, 3)


@pytest.mark.parametrize("name", list_models())
def test_model_defaults_carry_preprocessing(name):
    d = model_defaults(name)
    assert set(d) >= {"input_size", "in_channels", "mean", "std"}
    assert len(d["mean"]) == len(d["std"]) >= 1 and all(s > 0 for s in d["std"])
    assert all(0.0 <= m <= 1.0 for m in d["mean"])
    d["input_size"] = -1  # a copy: callers cannot change the registry's defaults
    assert model_defaults(name)["input_size"] != -1


DOCUMENTED_SIZE = re.compile(r"~([\d.]+)M params")


@pytest.mark.parametrize("name", [n for n in list_models() if DOCUMENTED_SIZE.search(_REGISTRY[n].__doc__ or "")])
def test_documented_param_count_is_right(name):
    d = model_defaults(name)
    doc = float(DOCUMENTED_SIZE.search(_REGISTRY[name].__doc__).group(1)) * 1e6
    n = count_params(create_model(name, in_channels=d["in_channels"], input_size=d["input_size"]))
    assert abs(n - doc) / n < 0.05, f"{name}: docstring says ~{doc / 1e6:.1f}M, model has {n / 1e6:.2f}M"


def test_enhanced_cnn_v2_matches_the_seed_param_count():
    assert count_params(create_model("enhanced_cnn_v2", in_channels=3, input_size=128)) == 686_823


BLOCK = ["Conv2d", "ReLU", "Conv2d", "ReLU", "BatchNorm2d"]  # the seed's order inside a double-conv block
ENHANCED_LAYERS = (BLOCK + ["MaxPool2d"] + BLOCK + ["MaxPool2d", "Dropout"] + BLOCK + ["MaxPool2d"] + BLOCK
                   + ["AdaptiveAvgPool2d", "Flatten", "Linear", "ReLU", "Dropout", "Linear", "ReLU", "Dropout",
                      "Linear"])


@pytest.mark.parametrize("name,dropouts", [("enhanced_cnn", [0.25, 0.5, 0.3]),
                                           ("enhanced_cnn_v2", [0.35, 0.6, 0.4])])
def test_enhanced_cnn_layer_order(name, dropouts):
    leaves = [m for m in create_model(name, in_channels=3, input_size=128).modules()
              if not list(m.children())]
    assert [type(m).__name__ for m in leaves] == ENHANCED_LAYERS
    assert [m.p for m in leaves if isinstance(m, nn.Dropout)] == dropouts
    assert [m.out_channels for m in leaves if isinstance(m, nn.Conv2d)] == [32, 32, 64, 64, 128, 128, 96, 96]
    assert [m.out_features for m in leaves if isinstance(m, nn.Linear)] == [128, 64, 7]


def test_unknown_model_suggests_the_closest_name():
    with pytest.raises(ValueError) as e:
        create_model("enhanced_cnn_v3")
    msg = str(e.value)
    assert "'enhanced_cnn_v3'" in msg and "Did you mean 'enhanced_cnn_v2'?" in msg
    assert all(n in msg for n in list_models())
    with pytest.raises(ValueError, match="Did you mean 'vgg_s'"):
        model_defaults("vgg-s")


def test_registering_a_name_twice_is_refused():
    with pytest.raises(ValueError, match="'vgg_s' registered twice"):
        register("vgg_s")(lambda **kw: None)
    assert _REGISTRY["vgg_s"].__name__ == "vgg_s"


def test_seed_cnn_refuses_a_size_its_pools_cannot_divide():
    with pytest.raises(ValueError, match="improved_cnn needs input_size divisible by 16"):
        create_model("improved_cnn", input_size=56)
