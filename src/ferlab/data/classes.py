"""The canonical FER2013 label order and the names users' downloads give to it."""

CLASSES = ("angry", "disgust", "fear", "happy", "sad", "surprise", "neutral")

# Folder names seen in FER2013 re-packagings, mapped to the canonical index.
_ALIASES = {
    "angry": 0, "anger": 0,
    "disgust": 1, "disgusted": 1,
    "fear": 2, "fearful": 2, "scared": 2,
    "happy": 3, "happiness": 3,
    "sad": 4, "sadness": 4,
    "surprise": 5, "surprised": 5,
    "neutral": 6,
}
# Also accept folders named by index ("0".."6") as some CSV-to-folder scripts write them.
_ALIASES.update({str(i): i for i in range(len(CLASSES))})


def class_index(name: str) -> int:
    """Map a folder name to the canonical label, or raise listing the valid names."""
    key = name.strip().lower()
    if key not in _ALIASES:
        raise ValueError(f"unknown class folder {name!r}; expected one of {', '.join(CLASSES)}")
    return _ALIASES[key]
