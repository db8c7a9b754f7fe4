"""Per-split image statistics that reveal a domain shift between training and test faces."""
from __future__ import annotations

import numpy as np

from .splits import Split


def _standardize(images: np.ndarray, dtype=np.float32) -> np.ndarray:
    """Each face at zero mean and unit variance, so contrast does not count as detail."""
    x = images.astype(dtype)
    return (x - x.mean((1, 2), keepdims=True)) / (x.std((1, 2), keepdims=True) + 1e-3 * 255)


def sharpness(images: np.ndarray) -> np.ndarray:
    """Mean absolute gradient of each per-face standardised image: ~0.5 for sharp FER2013 faces."""
    x = _standardize(images)
    return np.abs(np.diff(x, axis=1)).mean((1, 2)) + np.abs(np.diff(x, axis=2)).mean((1, 2))


def split_stats(splits: dict[str, Split]) -> str:
    """A table of pixel mean, per-face contrast and sharpness percentiles for each split."""
    lines = [f"{'split':<6}{'faces':>7}{'mean':>7}{'std':>7}{'face std p50':>14}{'sharpness p5/p50/p95':>24}"]
    for name, s in splits.items():
        x = s.images.reshape(len(s.images), -1).astype(np.float32)
        sh = np.percentile(sharpness(s.images), [5, 50, 95])
        lines.append(f"{name:<6}{len(x):>7}{x.mean():>7.1f}{x.std():>7.1f}{_face_contrast(s.images):>14.1f}"
                     f"{'/'.join(f'{v:.2f}' for v in sh):>24}")
    if "train" in splits and len(splits["train"].images):
        lines += [""] + compare_to_training(splits)
    return "\n".join(lines)


# A Gaussian blur of sigma 0.5 px at 48 px is about where a difference starts to show in FER2013's faces (clean
# Training against PublicTest/PrivateTest measures 0.0-0.1 px); per-face contrast may differ by 15% either way.
BLUR_LIMIT_PX = 0.5
CONTRAST_LIMIT = 0.15


def compare_to_training(splits: dict[str, Split]) -> list[str]:
    """Plain-words lines: does every other split look like the training faces (sharpness, contrast)?

    A model learns the sharpness and contrast of its training faces; a copy of FER2013 whose Training faces were
    blurred or faded (one such copy circulates) trains models that fail on real, sharp faces.
    """
    train = splits["train"].images
    train_spec, train_contrast = _power_spectrum(train), _face_contrast(train)  # once, for every other split
    out = []
    for name, other in splits.items():
        if name == "train" or not len(other.images):
            continue
        if other.images.shape[1:] != train.shape[1:]:
            out.append(f"{name}: faces of another size than the training faces ({other.images.shape[1:]} vs "
                       f"{train.shape[1:]}); not compared")
            continue
        spec = _power_spectrum(other.images)
        softer = _blur_from_spectra(train_spec, spec)   # training faces blurrier than these
        sharper = _blur_from_spectra(spec, train_spec)  # these blurrier than the training faces
        contrast = _face_contrast(other.images) / train_contrast
        problems = []
        if softer >= BLUR_LIMIT_PX:
            problems.append(f"the training faces are blurrier than the {name} faces, as if by a Gaussian blur of "
                            f"sigma {softer:.1f} px")
        if sharper >= BLUR_LIMIT_PX:
            problems.append(f"the {name} faces are blurrier than the training faces, as if by a Gaussian blur of "
                            f"sigma {sharper:.1f} px")
        if abs(contrast - 1) > CONTRAST_LIMIT:
            problems.append(f"the {name} faces have {contrast:.0%} of the training faces' contrast "
                            f"(median per-face pixel std)")
        if problems:
            out.append(f"WARNING {name}: " + "; ".join(problems) + ". A model trained on these training faces "
                       "will see different faces at test time: check where this copy of FER2013 comes from.")
        else:
            out.append(f"ok {name}: same sharpness and contrast as the training faces (blur difference "
                       f"{max(softer, sharper):.1f} px, contrast {contrast:.0%})")
    return out


def _face_contrast(images: np.ndarray) -> float:
    """Median per-face pixel standard deviation."""
    return float(np.median(images.reshape(len(images), -1).astype(np.float32).std(1)))


def _power_spectrum(images: np.ndarray) -> np.ndarray:
    x = _standardize(images, np.float64)
    h, w = x.shape[1:]
    window = np.hanning(h)[:, None] * np.hanning(w)[None]
    return (np.abs(np.fft.fft2(x * window)) ** 2).mean(0)


def relative_blur(blurred: np.ndarray, sharp: np.ndarray, band: tuple[float, float] = (0.02, 0.14)) -> float:
    """Gaussian sigma (pixels) that turns `sharp` faces into `blurred` ones, from their mean power spectra.

    The amplitude ratio sqrt(P_blurred / P_sharp) of a Gaussian blur is exp(-2 pi^2 sigma^2 f^2); a straight
    line through log-ratio against f^2 over `band` (cycles per pixel, above JPEG's noise floor) gives sigma.
    The free intercept absorbs the gain that per-face standardisation puts on the low frequencies.
    Returns 0 when `blurred` is no blurrier than `sharp`.
    """
    if blurred.shape[1:] != sharp.shape[1:]:
        raise ValueError(f"faces must have the same size; got {blurred.shape[1:]} and {sharp.shape[1:]}")
    return _blur_from_spectra(_power_spectrum(blurred), _power_spectrum(sharp), band)


def _blur_from_spectra(blurred: np.ndarray, sharp: np.ndarray, band: tuple[float, float] = (0.02, 0.14)) -> float:
    """`relative_blur` from the two mean power spectra."""
    ratio = np.sqrt(blurred / sharp)
    fy, fx = np.meshgrid(np.fft.fftfreq(ratio.shape[0]), np.fft.fftfreq(ratio.shape[1]), indexing="ij")
    f2 = fx ** 2 + fy ** 2
    sel = (f2 >= band[0] ** 2) & (f2 <= band[1] ** 2)
    slope = np.polyfit(f2[sel], np.log(ratio[sel]), 1)[0]
    return float(np.sqrt(max(0.0, -slope / (2 * np.pi ** 2))))
