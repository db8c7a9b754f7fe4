"""TrainConfig: typed defaults <- YAML <- key=value overrides, with errors that name the valid choices."""
from __future__ import annotations

import re
from pathlib import Path

import pytest
import yaml

from ferlab import configs
from ferlab.cli import main
from ferlab.data.augment import AugmentConfig
from ferlab.engine.config import OPTIMIZERS, SCHEDULES, TrainConfig, load_config
from ferlab.models import list_models

CONFIGS = configs.names("config")


def _yaml(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "exp.yaml"
    path.write_text(text)
    return path


def test_defaults():
    cfg = load_config()
    assert cfg == TrainConfig()
    assert (cfg.model, cfg.split, cfg.optimizer, cfg.schedule, cfg.precision) == \
        ("vgg_s", "official", "sgd", "cosine", "fp32")
    assert cfg.input_size is None and cfg.mean is None  # None: taken from the model's registered defaults
    assert cfg.augment == AugmentConfig() and cfg.augment.enabled


def test_yaml_overrides_defaults_and_overrides_yaml(tmp_path):
    path = _yaml(tmp_path, "model: resnet_s\nlr: 0.05\nepochs: 3\naugment: {hflip: 0.0, rotate: 5}\n")
    cfg = load_config(path)
    assert (cfg.model, cfg.lr, cfg.epochs, cfg.batch_size) == ("resnet_s", 0.05, 3, TrainConfig().batch_size)
    assert (cfg.augment.hflip, cfg.augment.rotate, cfg.augment.erase) == (0.0, 5.0, AugmentConfig().erase)

    cfg = load_config(path, ["lr=1e-3", "augment.erase=0", "tta=false", "mean=[0.5]", "model_args.dropout=0.1"])
    assert cfg.lr == 0.001 and isinstance(cfg.lr, float)
    assert cfg.augment.erase == 0 and cfg.augment.rotate == 5.0 and cfg.augment.hflip == 0.0  # merged, not replaced
    assert cfg.tta is False and cfg.mean == [0.5] and cfg.model_args == {"dropout": 0.1}
    assert cfg.model == "resnet_s" and cfg.epochs == 3

    assert load_config(path, {"epochs": 7, "augment.hflip": 0.5}).epochs == 7


def test_yaml_exponent_without_dot_is_a_float(tmp_path):
    raw = yaml.safe_load("lr: 4e-5")
    assert raw["lr"] == "4e-5"  # PyYAML (YAML 1.1) really does read it as a string
    cfg = load_config(_yaml(tmp_path, "lr: 4e-5\nweight_decay: 8e-4\naugment: {erase: 1e-1}\n"))
    assert cfg.lr == 4e-5 and isinstance(cfg.lr, float)
    assert cfg.weight_decay == 8e-4 and cfg.augment.erase == 0.1 and isinstance(cfg.augment.erase, float)
    assert load_config(overrides=["lr=3e-4"]).lr == 3e-4


def test_resolved_config_reloads_to_the_same_config(tmp_path):
    cfg = load_config(overrides=["model=enhanced_cnn_v2", "lr=4e-5", "augment.erase_area=[0.1, 0.3]"])
    again = load_config(_yaml(tmp_path, yaml.safe_dump(cfg.to_dict())))
    assert again == cfg and again.augment.erase_area == (0.1, 0.3)


@pytest.mark.parametrize("override,closest", [("lrr=0.1", "'lr'"), ("weight_decai=0", "'weight_decay'"),
                                              ("augment.eras=0", "'augment.erase'"),
                                              ("augment.hflp=0", "'augment.hflip'")])
def test_unknown_key_names_the_closest(override, closest):
    with pytest.raises(ValueError) as e:
        load_config(overrides=[override])
    key = override.split("=")[0]
    assert f"unknown config key '{key}'" in str(e.value) and f"did you mean {closest}?" in str(e.value)


def test_unknown_key_in_yaml(tmp_path):
    with pytest.raises(ValueError, match=r"'batchsize'; did you mean 'batch_size'\?"):
        load_config(_yaml(tmp_path, "batchsize: 32\n"))


@pytest.mark.parametrize("key,valid", [("optimizer", OPTIMIZERS), ("schedule", SCHEDULES)])
def test_invalid_choice_lists_valid_ones(key, valid):
    with pytest.raises(ValueError) as e:
        load_config(overrides=[f"{key}=rmsprop"])
    assert f"{key}: 'rmsprop'" in str(e.value) and ", ".join(valid) in str(e.value)


@pytest.mark.parametrize("overrides,says", [
    (["lr=fast"], "lr: expected a number, got 'fast'"),
    (["augment.rotate=lots"], "augment.rotate: expected a number"),
    (["augment=0"], "augment: expected a mapping"),
    (["epochs=0"], "epochs and batch_size must be >= 1"),
    (["split=random"], "split: 'random' is not one of official, seed"),
    (["lr"], "must look like key=value"),
    (["select_corruptions=[noise10,fog]"], "select_corruptions: unknown fog; known: blur1, noise10"),
    (["select_weight=2"], "select_weight: 2 is not a share between 0 and 1"),
    (["augment.jpeg_quality=[60,10]"], r"augment.jpeg_quality: expected a range \[low, high\] with 0 < low <= high"),
    (["augment.blur_sigma=1"], "augment.blur_sigma: expected a range"),
    (["augment.cutmix=-1"], "augment.mixup and augment.cutmix are Beta alphas >= 0"),
    (["augment.mixup=0.2", "augment.mix_prob=1.5"], "augment.mix_prob a probability, got 0.2, 0.0, 1.5"),
])
def test_bad_values_say_what_was_expected(overrides, says):
    with pytest.raises(ValueError, match=says):
        load_config(overrides=overrides)


def test_bad_config_files(tmp_path):
    with pytest.raises(FileNotFoundError, match="missing.yaml"):
        load_config(tmp_path / "missing.yaml")
    with pytest.raises(ValueError, match="expected a mapping of config keys, got list"):
        load_config(_yaml(tmp_path, "- lr\n- 0.1\n"))


def test_configs_were_found():
    assert "vgg_s_cpu48" in CONFIGS and "seed/iter5_enhanced_cnn_v2" in CONFIGS
    assert sum(n.startswith("seed/") for n in CONFIGS) == 5
    assert configs.names("sweep") == ["seed_regularisation"] and not any("sweeps" in n for n in CONFIGS)


@pytest.mark.parametrize("name", CONFIGS)
def test_every_shipped_config_loads(name):
    cfg = load_config(name)
    assert cfg.model in list_models()
    assert isinstance(cfg.lr, float) and isinstance(cfg.weight_decay, float)
    if name.startswith("seed/"):  # the seed's recipe: Adam, constant lr, no augmentation
        assert cfg.optimizer == "adam" and not cfg.augment.enabled


def test_config_argument_resolves_a_file_first_then_a_packaged_name(tmp_path, monkeypatch):
    shipped = configs.CONFIG_DIR / "vgg_s_cpu48.yaml"
    for spelling in ("vgg_s_cpu48", "vgg_s_cpu48.yaml"):
        assert configs.resolve(spelling) == shipped
    assert configs.resolve("seed/iter1_simple_cnn.yaml") == configs.CONFIG_DIR / "seed" / "iter1_simple_cnn.yaml"
    assert configs.resolve("seed_regularisation", "sweep") == configs.CONFIG_DIR / "sweeps" / "seed_regularisation.yaml"
    assert configs.packaged("seed_regularisation") is None  # sweeps are not training configs
    # a file of one's own in the working folder wins over the packaged config of the same name
    monkeypatch.chdir(tmp_path)
    (tmp_path / "vgg_s_cpu48.yaml").write_text("model: resnet_s\nepochs: 2\n")
    assert configs.resolve("vgg_s_cpu48.yaml") == Path("vgg_s_cpu48.yaml")
    assert load_config("vgg_s_cpu48.yaml").model == "resnet_s" and load_config("vgg_s_cpu48").model == "vgg_s"


@pytest.mark.parametrize("arg, suggestion", [("vgg_s_cpu4", "vgg_s_cpu48"), ("vgg_s_cpu_long", "vgg_s_cpu"),
                                             ("iter5_enhanced_cnn_v2", "seed/iter5_enhanced_cnn_v2"),
                                             ("seed/iter9.yaml", None)])
def test_unknown_config_name_suggests_the_closest_and_lists_all(arg, suggestion):
    with pytest.raises(FileNotFoundError) as e:
        load_config(arg)
    msg = str(e.value)
    assert "\n" not in msg and f"config {arg!r} is neither a file nor a packaged config name" in msg
    assert (f"did you mean {suggestion!r}?" in msg) if suggestion else "did you mean" not in msg
    assert msg.endswith(", ".join(CONFIGS))


def test_ferlab_configs_lists_and_prints_the_packaged_files(capsys):
    assert main(["configs"]) == 0
    out = capsys.readouterr().out
    listed = [line.split()[0] for line in out.splitlines() if line.startswith("  ")]
    assert listed == CONFIGS + configs.names("sweep")
    assert re.search(r"^  teacher_vgg_s_long2 +The shipped default's first end \(teacher 8\)", out, re.M)  # name, then its line
    assert main(["configs", "seed/iter5_enhanced_cnn_v2"]) == 0
    assert capsys.readouterr().out == (configs.CONFIG_DIR / "seed" / "iter5_enhanced_cnn_v2.yaml").read_text()
    assert main(["configs", "seed_regularisation.yaml"]) == 0 and "space:" in capsys.readouterr().out
    assert main(["configs", "nope"]) == 2 and "Packaged configs" in capsys.readouterr().err
