"""Decoded images to arrays, shared by the dataset readers, `predict` and `serve`.

One rule for channels wider than 8 bits (PIL's convert("L"/"RGB") clips a 16-bit grey value to 255, so a
16-bit PNG would come out all white), and pixel copies that never hold Python's GIL for long (a server's
other threads, `/health` among them, would stall behind a single 120 MB copy).
"""
from __future__ import annotations

import numpy as np
from PIL import Image, ImageOps

BAND_BYTES = 4 << 20  # pixels copied per call: a millisecond or two of memory traffic, the GIL held
# Scans a JPEG may have. Encoders write 1 (baseline) or about 10 (progressive; mozjpeg's optimised scripts
# a few more), but libjpeg redoes its work over the whole image for every scan: a 58 KB grey 3000x3000 JPEG
# whose last scan repeats 1,000 times takes 5 s to decode (20 s and more at 6000x5000).
MAX_JPEG_SCANS = 100


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


def jpeg_scans(data: bytes) -> int:
    """The number of scans (SOS markers) in JPEG bytes, found by walking the marker segments: segment payloads
    (an EXIF thumbnail, say) are skipped by their length, and entropy-coded data cannot hold a marker (a 0xFF
    byte there is followed by 0x00 or a restart marker). 0 for bytes that are not a JPEG."""
    if not data.startswith(b"\xff\xd8"):
        return 0
    pos, n, scans = 2, len(data), 0
    while pos + 1 < n:
        if data[pos] != 0xFF:  # entropy-coded data after a scan header: on to the next 0xFF
            pos = data.find(b"\xff", pos)
            if pos < 0:
                break
            continue
        marker = data[pos + 1]
        if marker == 0xFF:  # fill byte
            pos += 1
        elif marker in (0x00, 0x01) or 0xD0 <= marker <= 0xD7:  # stuffed 0xFF, TEM, restart: no length
            pos += 2
        elif marker == 0xD9:  # end of image
            break
        else:
            scans += marker == 0xDA
            pos += 2 + int.from_bytes(data[pos + 2:pos + 4], "big")
    return scans


class TooManyScans(ValueError):
    """A JPEG refused before decoding for its number of scans."""


def check_jpeg_scans(data: bytes, name: str, limit: int = MAX_JPEG_SCANS) -> None:
    """TooManyScans, before any pixel is decoded, for a JPEG with more than `limit` scans (see MAX_JPEG_SCANS)."""
    scans = jpeg_scans(data)
    if scans > limit:
        raise TooManyScans(f"{name}: a JPEG of {scans:,} scans, refused before decoding (the limit is {limit}; "
                         "cameras and encoders write at most a few dozen, and each scan costs a pass over the "
                         "whole image)")


def upright_rgb(im: Image.Image) -> np.ndarray:
    """A just-opened image -> RGB uint8 (H, W, 3), upright per its EXIF orientation (phones store photos
    sideways plus a rotation tag), with no whole-image copy beyond the decode itself."""
    ImageOps.exif_transpose(im, in_place=True)
    return rgb_array(im)


def rgb_array(im: Image.Image) -> np.ndarray:
    """Any PIL image -> RGB uint8 (H, W, 3), wide channels scaled by `to_8bit`, copied by `to_array`."""
    im = to_8bit(im)
    return to_array(im if im.mode == "RGB" else im.convert("RGB"))


def to_array(im: Image.Image) -> np.ndarray:
    """`np.asarray(im)`, copied a band of rows at a time.

    np.asarray copies the whole image in one C call that holds the GIL (tens of milliseconds at 40 MP); bands
    of a few megabytes (a photo of up to a megapixel in one) let other threads run in between.
    """
    w, h = im.size
    step = max(1, BAND_BYTES // (4 * w))  # no mode has more than 4 bytes a pixel
    if step >= h:
        return np.asarray(im)
    first = np.asarray(im.crop((0, 0, w, step)))
    out = np.empty((h, *first.shape[1:]), first.dtype)
    out[:step] = first
    for y in range(step, h, step):
        out[y:y + step] = np.asarray(im.crop((0, y, w, min(h, y + step))))
    return out


def rgb_to_gray(rgb: np.ndarray) -> np.ndarray:
    """RGB uint8 (H, W, 3) -> gray uint8 (H, W) by PIL's convert("L") (ITU-R 601 luma), a band at a time."""
    h, w = rgb.shape[:2]
    step = max(1, BAND_BYTES // max(1, 3 * w))
    out = np.empty((h, w), np.uint8)
    for y in range(0, h, step):
        out[y:y + step] = np.asarray(Image.fromarray(np.ascontiguousarray(rgb[y:y + step])).convert("L"))
    return out
