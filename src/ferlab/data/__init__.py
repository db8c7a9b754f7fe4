"""FER2013 input: readers for every form, the array cache, splits and batched augmentation."""
from .cache import load_fer2013, read_fer2013, resolve_data_path
from .classes import CLASSES
from .readers import USAGES, DataError, FerData
from .splits import SPLITS, Split, make_splits

__all__ = ["CLASSES", "USAGES", "SPLITS", "DataError", "FerData", "Split", "load_fer2013", "make_splits",
           "read_fer2013", "resolve_data_path"]
