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
        lines.append(f"{name:<6}{len(x):>7}{x.mean():>7.1f}{x.std():>7.1f}{np.median(x.std(1)):>14.1f}"
                     f"{'/'.join(f'{v:.2f}' for v in sh):>24}")
    if "train" in splits and len(splits["train"].images):
        train = _power_spectrum(splits["train"].images)  # once, for every other split
        for name, other in splits.items():
            if name != "train" and len(other.images):
                sigma = _blur_from_spectra(train, _power_spectrum(other.images))
                lines.append(f"train faces vs {name} faces: blurred by a Gaussian of sigma {sigma:.1f} px "
                             f"(at {other.images.shape[-1]} px; 0 = equally sharp)")
    return "\n".join(lines)


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
