"""ferlab: facial expression recognition on FER2013."""
__version__ = "0.1.0"


def __getattr__(name):
    # lazy: `import ferlab` stays fast and loads no weights; the Predictor (torch, OpenCV) only on use
    if name == "Predictor":
        from .inference.predictor import Predictor
        return Predictor
    raise AttributeError(f"module 'ferlab' has no attribute {name!r}")
