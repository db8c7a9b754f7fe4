"""ferlab: facial expression recognition on FER2013.

The Python API, the same functions the CLI's verbs call:

    import ferlab
    predictor = ferlab.Predictor()                     # `ferlab predict`: the shipped model, MTCNN faces
    faces = predictor.predict("photo.jpg")             # a path, image bytes, a numpy or PIL picture, or a list
    annotated = ferlab.draw(rgb, faces)                # a copy of the picture with boxes and labels
    data = ferlab.load_fer2013("fer2013/")             # FER2013 in any of its download forms
    summary = ferlab.fit(ferlab.load_config("vgg_s_cpu48"))   # `ferlab train`

Names are imported on first use, so `import ferlab` loads neither torch nor any weights.
"""
from ._version import __version__  # noqa: F401  (ferlab.__version__)

# public name -> the module that defines it (imported on first use)
_API = {
    "Predictor": "ferlab.inference.predictor",
    "top_emotion": "ferlab.inference.predictor",
    "draw": "ferlab.inference.draw",
    "read_image": "ferlab.inference.sources",
    "decode_image": "ferlab.inference.sources",
    "CLASSES": "ferlab.data.classes",
    "load_fer2013": "ferlab.data.cache",
    "make_splits": "ferlab.data.splits",
    "TrainConfig": "ferlab.engine.config",
    "load_config": "ferlab.engine.config",
    "fit": "ferlab.engine.trainer",
    "load_checkpoint": "ferlab.engine.checkpoint",
    "create_model": "ferlab.models.registry",
    "list_models": "ferlab.models.registry",
}
_RENAMED = {"draw": "draw_faces"}  # public name -> its name in its module

__all__ = sorted(_API)


def __getattr__(name):
    # lazy: `import ferlab` stays fast and loads no weights; torch and OpenCV only once a name is used
    if name not in _API:
        raise AttributeError(f"module 'ferlab' has no attribute {name!r}; its public names are {', '.join(__all__)}")
    import importlib
    value = getattr(importlib.import_module(_API[name]), _RENAMED.get(name, name))
    globals()[name] = value  # the next lookup is a plain attribute
    return value


def __dir__():
    return sorted(set(globals()) | set(__all__))
