"""Model registry and the families it holds (seed CNNs, VGG-style, ResNet-style, and ensembles of them)."""
from . import ensemble, resnet, seed, vgg  # noqa: F401  (registers the models)
from .registry import count_params, create_model, list_models, model_defaults, register

__all__ = ["count_params", "create_model", "list_models", "model_defaults", "register"]
