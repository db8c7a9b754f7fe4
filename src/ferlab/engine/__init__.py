"""Training loop, evaluation, checkpoints, callbacks and reports."""
from .checkpoint import load_checkpoint, model_from_checkpoint, save_checkpoint
from .config import TrainConfig, load_config
from .trainer import evaluate, fit, predict_probs, train_one_epoch

__all__ = ["TrainConfig", "evaluate", "fit", "load_checkpoint", "load_config", "model_from_checkpoint",
           "predict_probs", "save_checkpoint", "train_one_epoch"]
