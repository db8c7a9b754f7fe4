"""Video clips made at run time, and how far two analyses of a clip agree: for bench/predict_speed.py's video rows
and tests/test_tracking.py.

A clip is scikit-image's public-domain astronaut (her head and shoulders, in a soft oval) moving, growing and
shrinking and tilting smoothly over its rocket photo, written as H.264 by the ffmpeg binary of the
imageio-ffmpeg wheel (`ferlab.inference.video.H264Writer`):
- "one": one face, drifting across most of the frame and back, 0.6x-1.1x her size in the photo (at 640x480;
  the same share of the frame at other sizes), tilting up to 8 degrees;
- "two": she and her mirror image side by side, each drifting about in its half of the frame;
- "enter": she drifts about the right half, and her mirror image enters from the left a quarter of the way in,
  crosses the frame above her and leaves at the right three quarters of the way in;
- "cross": she and her mirror image on paths that cross, so that one hides the other for a while (where a
  face lost from sight comes back, a detection on every frame finds it at once, following at the next full
  detection).
"""
from __future__ import annotations

import math
from pathlib import Path

import cv2
import numpy as np

SCENES = ("one", "two", "enter", "cross")


def _sprite() -> tuple[np.ndarray, np.ndarray]:
    """The astronaut's head and shoulders (250x250, her face about 114 px wide) and an oval alpha mask that fades
    at its edge."""
    from skimage import data
    rgb = data.astronaut()[0:250, 100:350]
    h, w = rgb.shape[:2]
    yy, xx = np.mgrid[0:h, 0:w]
    r = ((xx - w / 2) / (w / 2)) ** 2 + ((yy - h / 2) / (h / 2)) ** 2
    return rgb, np.clip((1 - r) * 4, 0, 1).astype(np.float32)


def _paths(scene: str, t: float, seconds: float, width: int, height: int) -> list[tuple[float, float, float, float, bool]]:
    """(centre x, centre y, scale, degrees, mirrored) of each face at time t."""
    base = height / 480  # the same share of the frame at any size
    tau = 2 * math.pi
    one = (width / 2 + 0.3 * width * math.sin(tau * t / 6), height / 2 + 0.15 * height * math.sin(tau * t / 4.5),
           base * (0.85 + 0.25 * math.sin(tau * t / 7)), 8 * math.sin(tau * t / 5), False)
    if scene == "one":
        return [one]
    if scene == "two":
        return [(0.27 * width + 0.08 * width * math.sin(tau * t / 5), height / 2 + 0.15 * height * math.sin(tau * t / 4),
                 base * (0.7 + 0.1 * math.sin(tau * t / 6)), 6 * math.sin(tau * t / 4.5), False),
                (0.73 * width - 0.08 * width * math.sin(tau * t / 6 + 1), height / 2 + 0.15 * height * math.cos(tau * t / 5),
                 base * (0.7 + 0.1 * math.cos(tau * t / 7)), -6 * math.sin(tau * t / 5), True)]
    if scene == "enter":
        faces = [(0.72 * width + 0.1 * width * math.sin(tau * t / 6), 0.68 * height + 0.08 * height * math.sin(tau * t / 4.5),
                  base * (0.6 + 0.08 * math.sin(tau * t / 7)), one[3], False)]
        u = (t - seconds / 4) / (seconds / 2)  # 0..1 while the newcomer crosses
        if 0 <= u <= 1:
            faces.append((-0.2 * width + 1.4 * width * u, 0.3 * height, base * 0.6, 0.0, True))
        return faces
    if scene == "cross":
        return [one, (width / 2 - 0.3 * width * math.sin(tau * t / 7 + 1), height / 2 + 0.12 * height * math.cos(tau * t / 5),
                      base * (0.75 + 0.15 * math.cos(tau * t / 6)), -6 * math.sin(tau * t / 4), True)]
    raise ValueError(f"unknown scene {scene!r}; expected one of {', '.join(SCENES)}")


def make_clip(path: str | Path, size: tuple[int, int] = (640, 480), seconds: float = 10.0, fps: float = 30.0,
              scene: str = "one") -> Path:
    """An H.264 MP4 of `scene` at `size` (width, height); returns its path."""
    from skimage import data

    from ferlab.inference.video import H264Writer
    width, height = size
    photo = data.rocket()
    background = cv2.resize(photo, size, interpolation=cv2.INTER_AREA if width < photo.shape[1] else cv2.INTER_CUBIC)
    sprite, alpha = _sprite()
    sh, sw = sprite.shape[:2]
    writer = H264Writer(path, fps, size)
    try:
        for i in range(round(seconds * fps)):
            frame = background.astype(np.float32)
            for cx, cy, scale, degrees, mirrored in _paths(scene, i / fps, seconds, width, height):
                m = cv2.getRotationMatrix2D((sw / 2, sh / 2), degrees, scale)
                m[:, 2] += (cx - sw / 2, cy - sh / 2)
                # only the part of the frame the face covers is blended
                corners = np.array([[0, 0, 1], [sw, 0, 1], [0, sh, 1], [sw, sh, 1]], np.float64) @ m.T
                x0, y0 = np.maximum(np.floor(corners.min(0)).astype(int), 0)
                x1, y1 = np.minimum(np.ceil(corners.max(0)).astype(int), (width, height))
                if x1 <= x0 or y1 <= y0:
                    continue
                m[:, 2] -= (x0, y0)
                src = sprite[:, ::-1] if mirrored else sprite
                face = cv2.warpAffine(src, m, (x1 - x0, y1 - y0), flags=cv2.INTER_LINEAR).astype(np.float32)
                a = cv2.warpAffine(alpha, m, (x1 - x0, y1 - y0), flags=cv2.INTER_LINEAR)[..., None]
                region = frame[y0:y1, x0:x1]
                region += (face - region) * a
            writer.write(frame.round().astype(np.uint8))
    except BaseException:
        writer.abort()
        raise
    writer.close()
    return Path(path)


def agreement(reference: dict[int, list[dict]], faces: dict[int, list[dict]], min_iou: float = 0.8) -> dict:
    """How far `faces` agree with `reference` (the same video detected on every frame), both {frame: its faces}
    as `by_frame` gives them: "faces", the share of frames with the same faces (as many, each reference face
    paired with one of `faces` by IoU >= min_iou, best pairs first); "labels", the share of reference faces so
    paired whose label is the same too; "min_iou", the least IoU of a reference face with its best match
    (0 where it has none); "frames"."""
    from ferlab.inference.video import iou
    frames = sorted(set(reference) | set(faces))
    same_frames = same_labels = n_faces = 0
    least = 1.0
    for f in frames:
        a, b = reference.get(f, []), faces.get(f, [])
        pairs = sorted(((iou(x["box"], y["box"]), i, j) for i, x in enumerate(a) for j, y in enumerate(b)), reverse=True)
        used_a, used_b, matched = set(), set(), []
        for overlap, i, j in pairs:
            if overlap >= min_iou and i not in used_a and j not in used_b:
                used_a.add(i)
                used_b.add(j)
                matched.append((a[i], b[j]))
        same_frames += len(a) == len(b) == len(matched)
        n_faces += len(a)
        same_labels += sum(x["label"] == y["label"] for x, y in matched)
        least = min([least] + [max((iou(x["box"], y["box"]) for y in b), default=0.0) for x in a])
    return {"frames": len(frames), "faces": same_frames / max(1, len(frames)),
            "labels": same_labels / max(1, n_faces), "min_iou": least}


def by_frame(stream) -> dict[int, list[dict]]:
    """{frame index: its faces} of `Predictor.stream(video)`, frames without a face included."""
    return {fr.frame: faces for fr, faces in stream}
