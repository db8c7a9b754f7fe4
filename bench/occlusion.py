"""Faces behind hands: MTCNN's recall on faces whose mouth and chin are covered, and its false faces on photos
without any, all built at run time from pictures scikit-image ships.

    python bench/occlusion.py                # recall and false faces: reference thresholds, and ferlab's
    python bench/occlusion.py --stages       # plus the stage that dropped each face the reference misses
    python bench/occlusion.py --sweep        # plus recall and false faces for other thresholds

Faces: skimage's astronaut and camera photos, and the first 20 faces of its LFW subset (25x25 grey crops,
upscaled to 100 px and padded with their own border), each kept only if MTCNN finds it uncovered (score 0.95
or more): that box is the face's truth. Covers, drawn from the face's landmarks in three skin tones (light,
medium, dark) with shading and soft edges: `mask` (a rounded block over mouth and chin), `palm` (a hand from
below, fingertips under the nose), `side` (four fingers across mouth and chin from the side, palm beside the
face), `fist` (a fist under the chin, knuckles over the mouth) and `high` (a hand from below reaching the
eyes' lower lids). A covered face is found when a face box overlaps its truth by IoU 0.5 or more.
Face-free: 22 skimage photos (coffee, rocket, brick, grass, gravel, text, coins, moon, ...; chelsea the cat
is counted apart) as they are and upscaled 2x and 3x (their texture at the sizes faces are looked for; at most
1440x1080), 8 seeded random textures, the 100 non-faces of the LFW subset (padded as the faces are), and 30
hands drawn alone on face-free photos and textures: every face found there is a false one. And 64 large
photos with one astronaut each (the speed bench's 16, and 48 with her at 2x at 24 places, as they are and as
JPEGs): a face there that does not overlap the one the reference thresholds find surely (score 0.9 or more)
is a false one too.
Prints Markdown tables.
"""
from __future__ import annotations

import argparse
import time
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

KINDS = ("mask", "palm", "side", "fist", "high")
TONES = {"light": (236, 196, 162), "medium": (194, 138, 98), "dark": (112, 74, 50)}
LFW_FACES = 20


@dataclass
class Face:
    """A picture with one face, the box (x, y, w, h) and 5 landmarks MTCNN found in it uncovered."""
    name: str
    image: np.ndarray
    box: tuple[int, int, int, int]
    landmarks: tuple[tuple[float, float], ...]


def _rgb(a: np.ndarray) -> np.ndarray:
    """Any skimage picture -> uint8 RGB (H, W, 3)."""
    a = np.asarray(a)
    if a.dtype == bool:
        a = a.astype(np.uint8) * 255
    elif a.dtype != np.uint8:
        a = np.clip(255 * a.astype(np.float64) / max(float(a.max()), 1e-9), 0, 255).astype(np.uint8)
    if a.ndim == 2:
        a = np.repeat(a[..., None], 3, -1)
    return np.ascontiguousarray(a[..., :3])


def lfw_picture(i: int) -> np.ndarray:
    """LFW subset crop i (25x25 grey; 0-99 faces, 100-199 non-faces) upscaled to 100 px, padded by 50 with its
    own border (MTCNN wants some context around a face), as RGB."""
    from skimage import data
    crop = np.round(data.lfw_subset()[i] * 255).astype(np.uint8)
    big = cv2.resize(crop, (100, 100), interpolation=cv2.INTER_CUBIC)
    return _rgb(cv2.copyMakeBorder(big, 50, 50, 50, 50, cv2.BORDER_REPLICATE))


def faces(detector, lfw: int = LFW_FACES) -> list[Face]:
    """The uncovered faces (astronaut, camera, the first `lfw` of the LFW subset), with the box and landmarks
    `detector` finds in each: those it finds surely (one face, score 0.95 or more)."""
    from skimage import data
    pictures = [("astronaut", _rgb(data.astronaut())), ("camera", _rgb(data.camera()))]
    pictures += [(f"lfw{i:02d}", lfw_picture(i)) for i in range(lfw)]
    out = []
    for name, img in pictures:
        found = [f for f in detector(img[..., 0], img) if f.score >= 0.95]
        if len(found) == 1:
            out.append(Face(name, img, found[0].box, found[0].landmarks))
    return out


# ------------------------------------------------------------------------------------------------ drawing

def _paint(img: np.ndarray, mask: np.ndarray, tone, shade: np.ndarray, blur: float) -> np.ndarray:
    """`img` with a skin-toned shape: `mask` (float 0-1) softened by a Gaussian of `blur` px, coloured `tone`
    times the per-pixel `shade`."""
    k = 2 * int(np.ceil(2.5 * blur)) + 1
    alpha = cv2.GaussianBlur(mask.astype(np.float32), (k, k), blur)[..., None]
    colour = np.asarray(tone, np.float32) * shade[..., None]
    return np.clip(img * (1 - alpha) + colour * alpha, 0, 255)


def _bar(shape, p0, p1, width: float) -> np.ndarray:
    """A mask of a bar with round ends from p0 to p1 (a finger)."""
    m = np.zeros(shape, np.uint8)
    cv2.line(m, tuple(int(round(v)) for v in p0), tuple(int(round(v)) for v in p1), 1, max(1, int(round(width))),
             cv2.LINE_AA)
    return m.astype(np.float32)


def _ellipse(shape, centre, axes, angle: float = 0.0) -> np.ndarray:
    m = np.zeros(shape, np.uint8)
    cv2.ellipse(m, tuple(int(round(v)) for v in centre), tuple(max(1, int(round(v))) for v in axes), angle, 0, 360,
                1, -1, cv2.LINE_AA)
    return m.astype(np.float32)


def hand(img: np.ndarray, kind: str, box, landmarks, tone, rng: np.random.Generator) -> np.ndarray:
    """`img` (uint8 RGB) with a cover of `kind` over the face at `box` (x, y, w, h) with `landmarks` (MTCNN's
    five): skin `tone`, a light gradient from above, finger gaps in shadow, soft edges; jittered by `rng`."""
    x, y, s, _ = box
    h, w = img.shape[:2]
    (lx, ly), (rx, ry), (nx, ny), (mlx, mly), (mrx, mry) = landmarks
    cx = (lx + rx) / 2 + rng.uniform(-0.04, 0.04) * s
    eye_y, mouth_y, bottom = (ly + ry) / 2, (mly + mry) / 2, y + s
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    shade = 1.08 - 0.25 * np.clip((yy - ny) / max(1.0, bottom + 0.3 * s - ny), 0, 1)  # lit from above
    shade = shade * (1 + 0.04 * np.sin(xx / max(2.0, 0.07 * s)))                        # some relief
    out = img.astype(np.float32)
    tilt = np.radians(rng.uniform(-12, 12))
    up = np.array([np.sin(tilt), -np.cos(tilt)])  # fingers' direction, from the palm
    finger_w = 0.115 * s
    gaps = []
    if kind == "mask":
        top = (ny + mouth_y) / 2
        m = np.zeros((h, w), np.uint8)
        cv2.rectangle(m, (int(cx - 0.46 * s), int(top)), (int(cx + 0.46 * s), int(bottom + 0.15 * s)), 1, -1)
        mask = cv2.GaussianBlur(m.astype(np.float32), (0, 0), 0.08 * s) > 0.5
        out = _paint(out, mask, tone, shade, 0.012 * s + 0.5)
        return np.clip(out, 0, 255).astype(np.uint8)
    if kind in ("palm", "high"):
        tip_y = ny + 0.06 * s if kind == "palm" else eye_y + 0.1 * s
        palm_c = np.array([cx, bottom + 0.12 * s])
        mask = _ellipse((h, w), palm_c, (0.3 * s, 0.28 * s), np.degrees(tilt))
        for j in range(4):
            base = palm_c + np.array([(j - 1.5) * 0.135 * s, -0.12 * s])
            length = (base[1] - tip_y) * (0.92, 1.0, 0.97, 0.82)[j]
            mask = np.maximum(mask, _bar((h, w), base, base + up * length, finger_w))
            if j:
                gaps.append((base + np.array([-0.067 * s, 0]), base + np.array([-0.067 * s, 0]) + up * length * 0.85))
        thumb = palm_c + np.array([0.3 * s, -0.05 * s])
        mask = np.maximum(mask, _bar((h, w), thumb, thumb + np.array([0.12 * s, -0.25 * s]), 1.1 * finger_w))
    elif kind == "side":
        side = rng.choice([-1, 1])
        top = mouth_y - 0.1 * s
        palm_c = np.array([cx + side * 0.62 * s, (top + bottom) / 2 + 0.05 * s])
        mask = _ellipse((h, w), palm_c, (0.22 * s, 0.3 * s))
        for j in range(4):
            yj = top + j * 0.12 * s + rng.uniform(-0.02, 0.02) * s
            reach = cx - side * (0.3 - 0.04 * abs(j - 1.5)) * s
            mask = np.maximum(mask, _bar((h, w), (palm_c[0], yj), (reach, yj), finger_w))
            if j:
                gaps.append(((palm_c[0], yj - 0.06 * s), (reach, yj - 0.06 * s)))
    elif kind == "fist":
        centre = np.array([cx, bottom + 0.02 * s])
        mask = _ellipse((h, w), centre, (0.33 * s, 0.22 * s), np.degrees(tilt) / 2)
        for j in range(4):  # knuckles, up to the lower lip
            kc = centre + np.array([(j - 1.5) * 0.15 * s, -0.18 * s])
            mask = np.maximum(mask, _ellipse((h, w), kc, (0.085 * s, 0.1 * s)))
            if j:
                gaps.append((kc + np.array([-0.075 * s, -0.05 * s]), kc + np.array([-0.075 * s, 0.12 * s])))
    else:
        raise ValueError(f"unknown cover {kind!r}; expected one of {', '.join(KINDS)}")
    out = _paint(out, mask, tone, shade, 0.012 * s + 0.5)
    for p0, p1 in gaps:  # the shadowed gaps between fingers
        line = _bar((h, w), p0, p1, max(1.0, 0.02 * s)) * mask
        out = out * (1 - 0.35 * cv2.GaussianBlur(line, (0, 0), 0.01 * s + 0.5)[..., None])
    return np.clip(out, 0, 255).astype(np.uint8)


def covered(detector, seed: int = 0, lfw: int = LFW_FACES) -> list[tuple[str, np.ndarray, tuple]]:
    """(name, picture, truth box) for every face (`faces`) x cover kind x skin tone."""
    rng = np.random.default_rng(seed)
    return [(f"{f.name}/{kind}/{tone}", hand(f.image, kind, f.box, f.landmarks, rgb, rng), f.box)
            for f in faces(detector, lfw) for kind in KINDS for tone, rgb in TONES.items()]


def face_free(seed: int = 0, upscaled: bool = True) -> list[tuple[str, np.ndarray]]:
    """(name, picture) of pictures without a face: skimage photos (and, with `upscaled`, the same upscaled 2x and
    3x), random textures, LFW's non-faces, and hands alone on photos and textures. Chelsea the cat is named
    "cat:chelsea" (cats may count as faces)."""
    from skimage import data
    rng = np.random.default_rng(seed)
    out = [(name, _rgb(getattr(data, name)())) for name in (
        "coffee", "rocket", "brick", "grass", "gravel", "text", "coins", "moon", "page", "horse", "clock",
        "hubble_deep_field", "immunohistochemistry", "colorwheel", "logo", "checkerboard", "cell",
        "microaneurysms", "shepp_logan_phantom")]
    out += [("retina", _rgb(cv2.resize(data.retina(), (706, 706), interpolation=cv2.INTER_AREA))),
            ("motorcycle", _rgb(data.stereo_motorcycle()[0])), ("cat:chelsea", _rgb(data.chelsea()))]
    for i in range(8):  # noise smoothed at 8 scales: from pixel grain to blobs
        sigma = 0.5 * 2 ** (i / 1.5)
        noise = cv2.GaussianBlur(rng.normal(0, 1, (384, 384, 3)).astype(np.float32), (0, 0), sigma)
        out.append((f"texture{i}", np.clip(128 + noise / noise.std() * 50, 0, 255).astype(np.uint8)))
    photos = [(name, img) for name, img in out if not name.startswith("texture")]
    backgrounds = [img for name, img in out if min(img.shape[:2]) >= 256 and not name.startswith("cat:")]
    for f in (2, 3) if upscaled else ():
        out += [(f"{name}x{f}", np.ascontiguousarray(cv2.resize(img, None, fx=f, fy=f, interpolation=cv2.INTER_CUBIC)
                                                     [:1080, :1440])) for name, img in photos]
    out += [(f"lfw_nonface{i}", lfw_picture(i)) for i in range(100, 200)]
    for i in range(30):
        bg = backgrounds[i % len(backgrounds)]
        s = int(rng.integers(80, 200))
        bx, by = int(rng.integers(0, bg.shape[1] - s)), int(rng.integers(0, bg.shape[0] - s))
        # a pretend face geometry for the hand to cover, on a picture without the face
        marks = ((bx + 0.3 * s, by + 0.38 * s), (bx + 0.7 * s, by + 0.38 * s), (bx + 0.5 * s, by + 0.58 * s),
                 (bx + 0.35 * s, by + 0.78 * s), (bx + 0.65 * s, by + 0.78 * s))
        tone = list(TONES.values())[i % 3]
        out.append((f"hand{i}", hand(bg, KINDS[i % len(KINDS)], (bx, by, s, s), marks, tone, rng)))
    return out


def one_face_photos() -> list[tuple[str, np.ndarray]]:
    """Large photos with one face each: the speed bench's 16 (astronaut at 1x-2x on coffee or rocket, 1350x550
    and 1920x1080), and 48 of 1920x1080 with the astronaut at 2x (her suit's collar and badges are where MTCNN
    errs) at 12 places on coffee and on rocket, each as it is and through a JPEG of quality 92."""
    import importlib.util

    from skimage import data
    spec = importlib.util.spec_from_file_location("predict_speed", Path(__file__).with_name("predict_speed.py"))
    speed = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(speed)
    out = [(f"placed{w}x{h}_{i}", speed.placed_photo(w, h, i)) for w, h in ((1350, 550), (1920, 1080)) for i in range(8)]
    face = cv2.resize(data.astronaut(), None, fx=2, fy=2, interpolation=cv2.INTER_CUBIC)
    for bg in ("coffee", "rocket"):
        for j in range(12):
            img = cv2.resize(getattr(data, bg)(), (1920, 1080), interpolation=cv2.INTER_CUBIC)
            x, y = int((1920 - 1024) * j / 11), (0, 28, 56)[j % 3]
            img[y:y + 1024, x:x + 1024] = face[:1080 - y]
            jpeg = cv2.imdecode(cv2.imencode(".jpg", img[..., ::-1], [cv2.IMWRITE_JPEG_QUALITY, 92])[1], cv2.IMREAD_COLOR)
            out += [(f"astronaut2x_{bg}{j}", img), (f"astronaut2x_{bg}{j}.jpg", np.ascontiguousarray(jpeg[..., ::-1]))]
    return out


def _iou(a, b) -> float:
    ix = max(0.0, min(a[0] + a[2], b[0] + b[2]) - max(a[0], b[0]))
    iy = max(0.0, min(a[1] + a[3], b[1] + b[3]) - max(a[1], b[1]))
    inter = ix * iy
    return inter / (a[2] * a[3] + b[2] * b[3] - inter)


def recall(detector, cases) -> tuple[int, list[str]]:
    """Covered faces found (a box with IoU >= 0.5 against the truth), and the names of those missed."""
    missed = [name for name, img, truth in cases
              if not any(_iou(f.box, truth) >= 0.5 for f in detector(img[..., 0], img))]
    return len(cases) - len(missed), missed


def false_faces(detector, pictures, known: dict | None = None) -> dict[str, int]:
    """Faces found on each picture that has any besides its `known` faces (boxes; none if not named)."""
    known = known or {}
    counts = {name: sum(not any(_iou(f.box, k) >= 0.5 for k in known.get(name, ())) for f in detector(img[..., 0], img))
              for name, img in pictures}
    return {name: n for name, n in counts.items() if n}


def stage_of_loss(detector, img: np.ndarray, truth) -> tuple[str, float]:
    """The MTCNN stage after which no candidate overlaps `truth` any more, and the best score a truth candidate
    got from that stage's net ("found" and its score if none lost it). Candidates count as the face's at IoU 0.3
    before O-Net (P-Net's and R-Net's boxes are rough: O-Net's regression still moves them), 0.5 after it."""
    import torch
    mt = detector._mtcnn
    seen: dict[str, tuple[bool, float]] = {}
    refine = mt._refine

    def overlaps(boxes, at: float = 0.3) -> np.ndarray:
        b = boxes.detach().cpu().numpy()
        return np.array([_iou((x1, y1, x2 - x1, y2 - y1), truth) >= at for x1, y1, x2, y2 in b], bool)

    def traced_refine(pictures, grey, ids, boxes, sure, size, net):
        scores = {}
        forward = net.forward

        def spy(x):
            out = forward(x)
            scores["p"] = out[-1]
            return out
        net.forward = spy
        try:
            result = refine(pictures, grey, ids, boxes, sure, size, net)
        finally:
            net.forward = forward
        before = overlaps(boxes[ids.argsort(stable=True)]) if len(ids) else np.zeros(0, bool)
        best = float(scores["p"][torch.from_numpy(before)].max()) if before.any() else 0.0
        seen["R-Net" if size == 24 else "O-Net"] = (bool(overlaps(result[1], 0.3 if size == 24 else 0.5).any()), best)
        return result

    proposals = mt._proposals

    def traced_proposals(arrays, grey, pnet):
        result = proposals(arrays, grey, pnet)
        ok = overlaps(result[1])
        seen["P-Net"] = (bool(ok.any()), float(result[2][torch.from_numpy(ok)].max()) if ok.any() else 0.0)
        return result

    mt._refine, mt._proposals = traced_refine, traced_proposals
    try:
        detector(img[..., 0], img)
    finally:
        del mt._refine, mt._proposals
    for stage in ("P-Net", "R-Net", "O-Net"):
        kept, best = seen.get(stage, (False, 0.0))
        if not kept:
            return stage, best
    return "found", seen["O-Net"][1]


def _names(counts: dict, most: int = 3) -> str:
    """"(a, b, c +2 more)": the pictures with false faces, a few of them."""
    names = list(counts)
    more = f" +{len(names) - most} more" if len(names) > most else ""
    return f"({', '.join(names[:most]) or '-'}{more})"


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--min-face", type=float, default=40, help="the detector's min_face (default: 40, ferlab's)")
    ap.add_argument("--stages", action="store_true",
                    help="for each face the reference thresholds miss, the stage that dropped it")
    ap.add_argument("--sweep", action="store_true", help="recall and false faces for other thresholds too")
    ap.add_argument("--threads", type=int, default=1)
    a = ap.parse_args()
    import torch

    from ferlab.inference.detect import RESCUE_THRESHOLDS, make_detector
    from ferlab.inference.mtcnn import THRESHOLDS
    torch.set_num_threads(a.threads)
    t0 = time.perf_counter()
    reference = make_detector("mtcnn", min_face=a.min_face, rescue=None)
    cases, negatives, photos = covered(reference), face_free(), one_face_photos()
    known = {name: [f.box for f in reference(img[..., 0], img) if f.score >= 0.9] for name, img in photos}
    n_faces = len(cases) // (len(KINDS) * len(TONES))
    print(f"{n_faces} faces x {len(KINDS)} covers x {len(TONES)} tones = {len(cases)} covered faces; "
          f"{len(negatives)} face-free pictures ({sum(n.startswith('cat:') for n, _ in negatives)} a cat), "
          f"{len(photos)} large photos with one face; min_face {a.min_face:g}\n")

    def fmt(t):
        return "/".join(f"{v:g}" for v in t)
    settings = {f"reference thresholds {fmt(THRESHOLDS)}": dict(rescue=None),
                f"ferlab: {fmt(THRESHOLDS)}, or {fmt(RESCUE_THRESHOLDS)} with an eye found": {}}
    if a.sweep:
        for th in ((0.6, 0.7, 0.7), (0.6, 0.7, 0.6), (0.6, 0.7, 0.5), (0.6, 0.6, 0.5), (0.5, 0.6, 0.6)):
            settings[f"thresholds {fmt(th)}, no eye check"] = dict(thresholds=th, rescue=None)
        for th in ((0.6, 0.7, 0.5), (0.5, 0.6, 0.5), (0.6, 0.6, 0.4), (0.6, 0.6, 0.3), (0.5, 0.5, 0.5)):
            settings[f"{fmt(THRESHOLDS)}, or {fmt(th)} with an eye found"] = dict(rescue=th)
    print("| detector | covered faces found | recall | false faces on face-free pictures | on the cat | "
          "false faces on the one-face photos |")
    print("|---|---:|---:|---:|---:|---:|")
    missed_by = {}
    for label, kwargs in settings.items():
        det = make_detector("mtcnn", min_face=a.min_face, **kwargs)
        found, missed = recall(det, cases)
        fp = false_faces(det, negatives)
        cat = sum(n for name, n in fp.items() if name.startswith("cat:"))
        others = {name: n for name, n in fp.items() if not name.startswith("cat:")}
        extra = false_faces(det, photos, known)
        print(f"| {label} | {found} of {len(cases)} | {100 * found / len(cases):.1f}% | "
              f"{sum(others.values())} {_names(others)} | {cat} | {sum(extra.values())} {_names(extra)} |", flush=True)
        missed_by[label] = missed
    print("\n| cover | " + " | ".join(f"{tone}: reference -> ferlab" for tone in TONES) + " |")
    print("|---|" + "---:|" * len(TONES))
    before, after = list(missed_by.values())[:2]
    for kind in KINDS:
        cells = [" -> ".join(f"{n_faces - sum(m.split('/')[1:] == [kind, tone] for m in missed)}" for missed in
                             (before, after)) + f" of {n_faces}" for tone in TONES]
        print(f"| {kind} | " + " | ".join(cells) + " |")
    if a.stages and before:
        lost: dict[str, list[float]] = {}
        pictures = {name: (img, truth) for name, img, truth in cases}
        for name in before:
            stage, best = stage_of_loss(reference, *pictures[name])
            lost.setdefault(stage, []).append(best)
        print("\n| stage that dropped a face the reference thresholds miss | faces | its best score there: "
              "min / median / max |")
        print("|---|---:|---|")
        for stage, scores in lost.items():
            print(f"| {stage} | {len(scores)} | {min(scores):.3f} / {np.median(scores):.3f} / {max(scores):.3f} |")
    print(f"\n({time.perf_counter() - t0:.0f} s)")


if __name__ == "__main__":
    main()
