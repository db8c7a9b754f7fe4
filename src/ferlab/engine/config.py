"""One typed source of defaults; a YAML file overrides it; `key=value` overrides that."""
from __future__ import annotations

import dataclasses
import difflib
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from ..data.augment import AugmentConfig
from ..data.ferplus import LABEL_MODES
from ..data.splits import SPLITS

OPTIMIZERS = ("adam", "adamw", "sgd")
SCHEDULES = ("constant", "cosine", "onecycle")
PRECISIONS = ("fp32", "bf16")
DISTILL_VIEWS = ("augmented", "clean")


@dataclass
class TrainConfig:
    name: str = "run"
    model: str = "vgg_s"
    model_args: dict = field(default_factory=dict)   # extra factory arguments (e.g. dropout)
    input_size: int | None = None                    # None: the model's registered default
    in_channels: int | None = None
    mean: list[float] | None = None
    std: list[float] | None = None
    standardize: bool | None = None                  # per-face standardisation; None: the model's default
    # data
    data: str | None = None                          # None: $FERLAB_DATA
    split: str = "official"
    fraction: float = 1.0                            # share of each split to use (quick experiments)
    seed: int = 42
    labels: str = "fer2013"                          # fer2013, or FER+'s votes: ferplus (majority), ferplus_dist
    ferplus_blend: float = 0.0                       # fer2013 labels: this share of the target is FER+'s vote shares
    distill: str | None = None                       # a teacher ("ensemble", a run, a .pt): its soft targets ...
    distill_weight: float = 0.5                      # ... make this share of the target, on the same augmented views
    distill_temperature: float = 1.0                 # teacher probabilities softened by this temperature
    distill_views: str = "augmented"                 # augmented: the teacher runs on every training batch; clean:
                                                     # once, on the un-augmented faces (flip TTA), before epoch 1
    init: str | None = None                          # start from these weights ("default", a run, a .pt): fine-tuning
    # optimisation
    epochs: int = 30
    batch_size: int = 64                             # per process; global = batch_size x world size
    optimizer: str = "sgd"
    lr: float = 0.01
    weight_decay: float = 5e-4
    momentum: float = 0.9
    nesterov: bool = True
    schedule: str = "cosine"
    warmup_epochs: float = 1.0
    label_smoothing: float = 0.0
    ema: float = 0.0                                 # EMA decay of the weights; 0 = off
    grad_clip: float = 0.0
    sam_rho: float = 0.0                             # sharpness-aware minimisation radius (2 passes a step); 0 = off
    augment: AugmentConfig = field(default_factory=AugmentConfig)
    # model selection on the validation split: (1 - select_weight) x its accuracy + select_weight x the mean
    # accuracy on its faces under these corruptions (names in ferlab/data/corruptions.py); [] = accuracy alone
    select_corruptions: list[str] = field(default_factory=list)
    select_weight: float = 0.5
    # execution
    precision: str = "fp32"
    channels_last: bool = True
    device: str = "auto"                             # auto, cpu, cuda, cuda:1
    threads: int = 0                                 # torch CPU threads; 0 = torch's default
    eval_batch_size: int = 256
    tta: bool = True                                 # also report horizontal-flip TTA accuracy
    out_dir: str = "runs"

    def __post_init__(self):
        _coerce_numbers(self)
        if isinstance(self.augment, dict):
            self.augment = _build(AugmentConfig, self.augment, "augment.")
        if not isinstance(self.augment, AugmentConfig):
            raise ValueError(f"augment: expected a mapping such as {{hflip: 0.5, erase: 0.25}}, "
                             f"got {self.augment!r}")
        _coerce_numbers(self.augment, "augment.")
        for f in dataclasses.fields(AugmentConfig):  # the (low, high) ranges
            v = getattr(self.augment, f.name)
            if f.type.startswith("tuple"):
                if not (isinstance(v, (list, tuple)) and len(v) == 2 and all(isinstance(e, (int, float)) for e in v)
                        and 0 < v[0] <= v[1]):
                    raise ValueError(f"augment.{f.name}: expected a range [low, high] with 0 < low <= high, "
                                     f"got {v!r}")
                setattr(self.augment, f.name, (float(v[0]), float(v[1])))
        if min(self.augment.mixup, self.augment.cutmix) < 0 or not 0 <= self.augment.mix_prob <= 1:
            raise ValueError(f"augment.mixup and augment.cutmix are Beta alphas >= 0 (0 = off) and augment.mix_prob "
                             f"a probability, got {self.augment.mixup}, {self.augment.cutmix}, "
                             f"{self.augment.mix_prob}")
        for key, valid in (("optimizer", OPTIMIZERS), ("schedule", SCHEDULES), ("precision", PRECISIONS),
                           ("split", SPLITS), ("labels", LABEL_MODES), ("distill_views", DISTILL_VIEWS)):
            if getattr(self, key) not in valid:
                raise ValueError(f"{key}: {getattr(self, key)!r} is not one of {', '.join(valid)}")
        if not 0 <= self.distill_weight <= 1 or not self.distill_temperature > 0:
            raise ValueError(f"distill_weight must be a share between 0 and 1 and distill_temperature > 0, got "
                             f"{self.distill_weight} and {self.distill_temperature}")
        if self.select_corruptions:
            from ..data.corruptions import CORRUPTIONS
            if isinstance(self.select_corruptions, str):
                self.select_corruptions = [self.select_corruptions]
            unknown = [c for c in self.select_corruptions if c not in CORRUPTIONS or c == "clean"]
            if unknown:
                raise ValueError(f"select_corruptions: unknown {', '.join(map(str, unknown))}; known: "
                                 f"{', '.join(c for c in CORRUPTIONS if c != 'clean')}")
        if not 0 <= self.select_weight <= 1:
            raise ValueError(f"select_weight: {self.select_weight} is not a share between 0 and 1")
        if not 0 <= self.ferplus_blend <= 1:
            raise ValueError(f"ferplus_blend: {self.ferplus_blend} is not a share between 0 and 1")
        if self.ferplus_blend > 0 and self.labels != "fer2013":
            raise ValueError(f"ferplus_blend mixes FER+'s votes into the FER2013 labels (labels: fer2013); with "
                             f"labels: {self.labels} the target is FER+'s already")
        if self.sam_rho < 0:
            raise ValueError(f"sam_rho: {self.sam_rho} is a radius in weight space, >= 0 (0 = off; 0.05 is usual)")
        if self.epochs < 1 or self.batch_size < 1:
            raise ValueError(f"epochs and batch_size must be >= 1 (got {self.epochs}, {self.batch_size})")

    def to_dict(self) -> dict:
        d = dataclasses.asdict(self)
        for k, v in d["augment"].items():
            if isinstance(v, tuple):
                d["augment"][k] = list(v)
        return d


# What `ferlab train --resume RUN key=value` may change: where and how fast the run executes, never what it
# computes (model, data split, optimisation, epochs), which would make the resumed run a different run.
RESUME_KEYS = ("data", "device", "threads", "eval_batch_size")


def resume_config(saved: dict, overrides: list[str] | None = None) -> TrainConfig:
    """A run's saved config with `key=value` overrides of RESUME_KEYS only; any other key is refused by name."""
    values = dict(saved)
    for key, value in map(_split_override, overrides or []):
        if key not in RESUME_KEYS:
            raise ValueError(f"cannot change {key!r} when resuming: a resumed run keeps its own config. Only "
                             f"{', '.join(RESUME_KEYS)} may change; start a new run for anything else")
        values[key] = value
    return config_from_saved(values)


def config_from_saved(values: dict) -> TrainConfig:
    """The TrainConfig a checkpoint or run folder recorded. `blur` (an evaluation blur for a degraded FER2013
    copy, removed) is dropped where it was 0, its no-op value; any other value is refused as an unknown key."""
    values = dict(values)
    if not values.get("blur", 1):
        del values["blur"]
    return _build(TrainConfig, values)


def _coerce_numbers(obj, prefix: str = "") -> None:
    """YAML 1.1 reads "4e-5" (no dot) as a string: coerce numeric fields from their declared type."""
    for f in dataclasses.fields(obj):
        v = getattr(obj, f.name)
        if isinstance(v, str) and f.type in ("float", "int", "float | None", "int | None"):
            try:
                setattr(obj, f.name, float(v) if "float" in f.type else int(v))
            except ValueError:
                raise ValueError(f"{prefix}{f.name}: expected a number, got {v!r}") from None


def _build(cls, values: dict, prefix: str = ""):
    names = {f.name for f in dataclasses.fields(cls)}
    for k in values:
        if k not in names:
            close = difflib.get_close_matches(k, names, n=1)
            hint = f"; did you mean {prefix + close[0]!r}?" if close else "."
            raise ValueError(f"unknown config key {prefix + k!r}{hint} Valid keys: {', '.join(sorted(names))}")
    return cls(**values)


def _split_override(item: str) -> tuple[str, object]:
    """"key=value" -> (key, parsed value): "1e-3" -> float, "true" -> bool, "[1, 2]" -> list."""
    if "=" not in item:
        raise ValueError(f"override {item!r} must look like key=value (e.g. lr=0.01, augment.erase=0)")
    key, text = item.split("=", 1)
    return key.strip(), yaml.safe_load(text)


def read_yaml_mapping(path: str | Path, what: str) -> dict:
    """A YAML file that must hold a mapping (a config, a sweep); clear errors otherwise."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{what} file {path} not found")
    values = yaml.safe_load(path.read_text()) or {}
    if not isinstance(values, dict):
        raise ValueError(f"{path}: expected a mapping of {what} keys, got {type(values).__name__}")
    return values


def load_config(path: str | Path | None = None, overrides: list[str] | dict | None = None) -> TrainConfig:
    """Defaults <- YAML file <- overrides ("key=value" strings, dotted keys for nested: augment.erase=0).
    `path` is a file, or the name of a config shipped in the package ("vgg_s_cpu48", "seed/iter1_simple_cnn")."""
    from ..configs import resolve
    values = read_yaml_mapping(resolve(path, "config"), "config") if path is not None else {}
    if isinstance(overrides, dict):
        overrides = [f"{k}={v}" for k, v in overrides.items()]
    for key, value in map(_split_override, overrides or []):
        target = values
        *parents, leaf = key.split(".")
        for p in parents:
            target = target.setdefault(p, {})
        target[leaf] = value
    return _build(TrainConfig, values)
