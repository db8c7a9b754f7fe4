"""One rule for images whose channels are wider than 8 bits, shared by the dataset readers, `predict` and
`serve`: PIL's convert("L"/"RGB") clips a 16-bit grey value to 255, so a 16-bit PNG would come out all white."""
from __future__ import annotations

import numpy as np
from PIL import Image


def to_8bit(im: Image.Image) -> Image.Image:
    """`im` with 8-bit channels, its brightness kept.

    16-bit grey (modes I;16, I;16B, I;16L) is scaled by 255/65535. 32-bit integer grey (mode I) is scaled the
    same way when it holds values above 255, and taken as 8-bit otherwise. Float grey (mode F) is taken as
    0..1 when its maximum is at most 1, else as 0..255. Every other mode is returned as it is.
    """
    if im.mode.startswith("I;16") or im.mode == "I":
        a = np.asarray(im, dtype=np.float64)
        if im.mode.startswith("I;16") or (a.size and a.max() > 255):
            a = a * (255.0 / 65535.0)
        return Image.fromarray(np.clip(np.round(a), 0, 255).astype(np.uint8), "L")
    if im.mode == "F":
        a = np.nan_to_num(np.asarray(im, dtype=np.float64))
        if a.size and a.max() <= 1.0:
            a = a * 255.0
        return Image.fromarray(np.clip(np.round(a), 0, 255).astype(np.uint8), "L")
    return im
