"""MTCNN (Zhang et al., 2016) in PyTorch: three cascaded CNNs give face boxes, scores and 5 landmarks.

Weights: the trained P-Net, R-Net and O-Net that the `mtcnn` PyPI package (MIT) ships inside its wheel,
read at run time from the installed package, never copied into ferlab and never downloaded. The package
itself is never imported (its `__init__` imports TensorFlow): `importlib.util.find_spec` locates its
files without running it, and `joblib.load` turns each `assets/weights/*.lz4` into the plain list of
numpy arrays Keras' `set_weights` takes, in layer order: HWIO conv kernels, biases, PReLU alphas and
(in, out) dense kernels. Only the arrays are used; the networks and the pipeline below are ferlab's.

The pipeline follows the reference implementation (mtcnn 1.0), so that its results can be compared:
1. P-Net, fully convolutional, scores every 12x12 window (stride 2) of an image pyramid whose first
   level maps `min_face` pixels onto 12 and whose levels shrink by 0.709 until the image is under 12
   pixels: a larger `min_face` starts the pyramid smaller, and the first level is most of the cost.
   Windows over 0.6 get their regressed box; NMS (IoU 0.5) per level, then 0.7 over all levels.
2. R-Net re-scores each (squared) candidate on a 24x24 crop: over 0.7 kept, regressed, NMS 0.7.
3. O-Net re-scores on a 48x48 crop, regresses the box and the 5 landmarks: over 0.8 kept, NMS 0.7
   measured against the smaller box (so a box inside a better one goes).
Input pixels are (x - 127.5) / 128. Landmarks come in the reference's order: the eye on the image's
left, the eye on its right, the nose, the mouth's left corner, its right corner.

Every stage is batched: images of one size go through each pyramid level together, and all candidates
of all images through R-Net and O-Net in one forward each. NMS is ferlab's own (`nms` below), a matrix
form that runs on the device the boxes are on.
"""
from __future__ import annotations

import importlib.util
import math
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

SCALE_FACTOR = 0.709     # pyramid step, as trained and as the reference uses
THRESHOLDS = (0.6, 0.7, 0.8)
MAX_PROPOSALS = 4000     # per image and pyramid level, before NMS: bounds its IoU matrix on textured images


def weights_dir() -> Path:
    """The installed `mtcnn` package's weight folder, found without importing the package."""
    spec = importlib.util.find_spec("mtcnn")
    if spec is None or not spec.submodule_search_locations:
        raise RuntimeError("the mtcnn face detector reads its trained weights from the 'mtcnn' package: "
                           "pip install mtcnn (it needs joblib and lz4 only, not TensorFlow); or use "
                           "detector='haar' or 'lbp'")
    folder = Path(next(iter(spec.submodule_search_locations))) / "assets" / "weights"
    if not folder.is_dir():
        raise RuntimeError(f"the installed mtcnn package has no {folder}; expected mtcnn>=1.0 (pip install -U mtcnn)")
    return folder


def keras_arrays(net: str) -> list[np.ndarray]:
    """The Keras weight list of "pnet", "rnet" or "onet" as shipped in the mtcnn wheel."""
    import joblib
    path = weights_dir() / f"{net}.lz4"
    if not path.is_file():
        raise RuntimeError(f"{path} not found in the installed mtcnn package (expected pnet/rnet/onet.lz4)")
    return [np.asarray(a, dtype=np.float32) for a in joblib.load(path)]


def _pool_same(x: torch.Tensor, k: int, s: int) -> torch.Tensor:
    """Keras MaxPooling2D(padding="same"): ceil(n / s) outputs, the padding split with the extra at the end."""
    h, w = x.shape[-2:]
    ph = max((math.ceil(h / s) - 1) * s + k - h, 0)
    pw = max((math.ceil(w / s) - 1) * s + k - w, 0)
    if ph or pw:
        x = F.pad(x, (pw // 2, pw - pw // 2, ph // 2, ph - ph // 2), value=float("-inf"))
    return max_pool(x, k, s)


def max_pool(x: torch.Tensor, k: int, s: int) -> torch.Tensor:
    """F.max_pool2d(x, k, s) (no padding) as a separable maximum: over k strided row slices, then over k
    strided column slices of that. The same numbers; on the CPU 3-20x faster than PyTorch's pooling kernel on
    these small, many-channel maps (most with channels-last tensors, as the nets run on the CPU)."""
    h, w = x.shape[-2:]
    oh, ow = (h - k) // s + 1, (w - k) // s + 1
    rows = x[..., 0:s * (oh - 1) + 1:s, :]
    for i in range(1, k):
        rows = torch.maximum(rows, x[..., i:i + s * (oh - 1) + 1:s, :])
    out = rows[..., 0:s * (ow - 1) + 1:s]
    for j in range(1, k):
        out = torch.maximum(out, rows[..., j:j + s * (ow - 1) + 1:s])
    return out


def _keras_flatten(x: torch.Tensor) -> torch.Tensor:
    """The reference's Permute((2, 1, 3)) + Flatten: (N, C, H, W) flattened in W, H, C order."""
    return x.permute(0, 3, 2, 1).flatten(1)


class _KerasNet(nn.Module):
    """A net whose submodules are declared in the Keras layer order, so the weight list loads in one walk."""

    def load_keras(self, arrays: list[np.ndarray]) -> "_KerasNet":
        it = iter(arrays)
        for m in self.children():
            if isinstance(m, nn.Conv2d):  # HWIO -> OIHW
                m.weight.data.copy_(torch.from_numpy(next(it).transpose(3, 2, 0, 1).copy()))
                m.bias.data.copy_(torch.from_numpy(next(it)))
            elif isinstance(m, nn.Linear):  # (in, out) -> (out, in)
                m.weight.data.copy_(torch.from_numpy(next(it).T.copy()))
                m.bias.data.copy_(torch.from_numpy(next(it)))
            elif isinstance(m, nn.PReLU):
                m.weight.data.copy_(torch.from_numpy(next(it).reshape(-1)))
        left = sum(1 for _ in it)
        if left:
            raise ValueError(f"{type(self).__name__}: {left} weight arrays left over; the mtcnn package's layout changed")
        return self.eval().requires_grad_(False)


class PNet(_KerasNet):
    """Proposal net, fully convolutional: (N, 3, H, W) -> box offsets (N, 4, h, w), face probability (N, h, w)."""

    def __init__(self):
        super().__init__()
        self.conv1, self.prelu1 = nn.Conv2d(3, 10, 3), nn.PReLU(10)
        self.conv2, self.prelu2 = nn.Conv2d(10, 16, 3), nn.PReLU(16)
        self.conv3, self.prelu3 = nn.Conv2d(16, 32, 3), nn.PReLU(32)
        self.box, self.cls = nn.Conv2d(32, 4, 1), nn.Conv2d(32, 2, 1)

    def forward(self, x):
        x = _pool_same(self.prelu1(self.conv1(x)), 2, 2)
        x = self.prelu3(self.conv3(self.prelu2(self.conv2(x))))
        return self.box(x), self.cls(x).softmax(1)[:, 1]


class RNet(_KerasNet):
    """Refinement net on 24x24 crops: box offsets (N, 4), face probability (N,)."""

    def __init__(self):
        super().__init__()
        self.conv1, self.prelu1 = nn.Conv2d(3, 28, 3), nn.PReLU(28)
        self.conv2, self.prelu2 = nn.Conv2d(28, 48, 3), nn.PReLU(48)
        self.conv3, self.prelu3 = nn.Conv2d(48, 64, 2), nn.PReLU(64)
        self.fc4, self.prelu4 = nn.Linear(576, 128), nn.PReLU(128)
        self.box, self.cls = nn.Linear(128, 4), nn.Linear(128, 2)

    def forward(self, x):
        x = _pool_same(self.prelu1(self.conv1(x)), 3, 2)
        x = max_pool(self.prelu2(self.conv2(x)), 3, 2)
        x = self.prelu4(self.fc4(_keras_flatten(self.prelu3(self.conv3(x)))))
        return self.box(x), self.cls(x).softmax(1)[:, 1]


class ONet(_KerasNet):
    """Output net on 48x48 crops: box offsets (N, 4), landmarks (N, 10: five x then five y), probability (N,)."""

    def __init__(self):
        super().__init__()
        self.conv1, self.prelu1 = nn.Conv2d(3, 32, 3), nn.PReLU(32)
        self.conv2, self.prelu2 = nn.Conv2d(32, 64, 3), nn.PReLU(64)
        self.conv3, self.prelu3 = nn.Conv2d(64, 64, 3), nn.PReLU(64)
        self.conv4, self.prelu4 = nn.Conv2d(64, 128, 2), nn.PReLU(128)
        self.fc5, self.prelu5 = nn.Linear(1152, 256), nn.PReLU(256)
        self.box, self.landmarks, self.cls = nn.Linear(256, 4), nn.Linear(256, 10), nn.Linear(256, 2)

    def forward(self, x):
        x = _pool_same(self.prelu1(self.conv1(x)), 3, 2)
        x = max_pool(self.prelu2(self.conv2(x)), 3, 2)
        x = _pool_same(self.prelu3(self.conv3(x)), 2, 2)
        x = self.prelu5(self.fc5(_keras_flatten(self.prelu4(self.conv4(x)))))
        return self.box(x), self.landmarks(x), self.cls(x).softmax(1)[:, 1]


def load_nets(device="cpu") -> tuple[PNet, RNet, ONet]:
    """The three nets with the mtcnn package's trained weights."""
    return tuple(net().load_keras(keras_arrays(name)).to(device)
                 for net, name in ((PNet, "pnet"), (RNet, "rnet"), (ONet, "onet")))


def for_grey(net: _KerasNet) -> _KerasNet:
    """A copy of `net` that takes one channel where it took three equal ones: the first convolution's kernels
    summed over their input channels. The same numbers (up to float rounding) for a third of that layer's work."""
    import copy
    grey = copy.deepcopy(net)
    conv = grey.conv1
    folded = nn.Conv2d(1, conv.out_channels, conv.kernel_size, conv.stride, conv.padding).to(conv.weight.device)
    folded.weight.data.copy_(conv.weight.data.sum(1, keepdim=True))
    folded.bias.data.copy_(conv.bias.data)
    grey.conv1 = folded
    return grey.eval().requires_grad_(False)


@torch.no_grad()
def onet_at(onet: ONet, picture: np.ndarray, squares) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """MTCNN's last stage alone, on given squares of a picture: O-Net's box, score and landmarks for each, as
    `Mtcnn` gives them for its candidates (before its threshold and NMS), without the pyramid, P-Net and R-Net
    that find the candidates. A video's faces are followed with it from one frame to the next
    (`inference/tracking.py`): one 48x48 crop per face instead of a whole detection.

    onet: the one-channel O-Net (`for_grey`); it sees the mean of `picture`'s channels ((H, W, 3) uint8 in any
    order) or the (H, W) picture itself. squares: (n, 4) x1, y1, x2, y2. Returns boxes (n, 4) x1, y1, x2, y2
    clamped to the picture, scores (n,) and landmarks (n, 5, 2) x, y, all float64."""
    squares = np.asarray(squares, np.float32).reshape(-1, 4)
    h, w = picture.shape[:2]
    if len(squares) == 0:
        return np.zeros((0, 4)), np.zeros(0), np.zeros((0, 5, 2))
    device = next(onet.parameters()).device
    crops = torch.from_numpy(np.stack([_crop_48(picture, s) for s in squares])).to(device)
    reg, lm, prob = (t.cpu().numpy().astype(np.float64) for t in onet(crops))
    wh = np.tile(squares[:, 2:] - squares[:, :2] + 1, 2).astype(np.float64)  # as `Mtcnn._refine` regresses
    marks = np.stack([lm[:, :5] * wh[:, :1] + squares[:, :1] - 1, lm[:, 5:] * wh[:, 1:2] + squares[:, 1:2] - 1], -1)
    boxes = squares + reg * wh
    boxes[:, 0::2] = boxes[:, 0::2].clip(0, w - 1)
    boxes[:, 1::2] = boxes[:, 1::2].clip(0, h - 1)
    return boxes, prob, marks


def _crop_48(picture: np.ndarray, square, size: int = 48) -> np.ndarray:
    """(1, size, size) normalised crop of the mean of `picture`'s channels over `square`, sampled where
    `crop_resize` samples (the reference's positions, 0 outside the picture), reading only the pixels under it."""
    h, w = picture.shape[:2]
    x1, y1, x2, y2 = (float(v) for v in square)
    t = np.linspace(0, 1, size, dtype=np.float32)
    ys = (y1 + (y2 - y1) * t) * ((h - 1) / h)
    xs = (x1 + (x2 - x1) * t) * ((w - 1) / w)
    y0, x0 = np.floor(ys), np.floor(xs)
    wy, wx = (ys - y0)[:, None], (xs - x0)[None, :]
    y0i, x0i = np.clip(y0, 0, h - 1).astype(np.intp), np.clip(x0, 0, w - 1).astype(np.intp)
    y1i, x1i = np.minimum(y0i + 1, h - 1), np.minimum(x0i + 1, w - 1)
    top, left = int(y0i.min()), int(x0i.min())
    region = picture[top:int(y1i.max()) + 1, left:int(x1i.max()) + 1]
    if region.ndim == 3:  # uint8 sums are exact, so the order of the channels does not matter
        region = (region[..., 0].astype(np.uint16) + region[..., 1] + region[..., 2]).astype(np.float32) / 3
    region = (region.astype(np.float32) - 127.5) / 128.0
    r0, r1, c0, c1 = (y0i - top)[:, None], (y1i - top)[:, None], (x0i - left)[None], (x1i - left)[None]
    upper = region[r0, c0] + (region[r0, c1] - region[r0, c0]) * wx
    lower = region[r1, c0] + (region[r1, c1] - region[r1, c0]) * wx
    inside = ((ys >= 0) & (ys <= h - 1))[:, None] & ((xs >= 0) & (xs <= w - 1))[None, :]
    return ((upper + (lower - upper) * wy) * inside)[None].astype(np.float32)


def box_iou(boxes: torch.Tensor, mode: str = "union") -> torch.Tensor:
    """Pairwise overlap of (n, 4) x1, y1, x2, y2 boxes: intersection over union, or over the smaller box."""
    area = (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])
    lt = torch.maximum(boxes[:, None, :2], boxes[None, :, :2])
    rb = torch.minimum(boxes[:, None, 2:], boxes[None, :, 2:])
    inter = (rb - lt).clamp(min=0).prod(-1)
    denom = area[:, None] + area[None] - inter if mode == "union" else torch.minimum(area[:, None], area[None])
    return inter / denom.clamp(min=1e-9)


def nms(boxes: torch.Tensor, scores: torch.Tensor, groups: torch.Tensor, threshold: float,
        mode: str = "union") -> torch.Tensor:
    """Indices kept, best score first: a box goes when any better-scored box of its group overlaps it by more
    than `threshold` (the matrix form the reference uses: one IoU matrix, no sequential loop, so it runs as a
    few tensor ops on any device). `groups` (image ids) never suppress each other."""
    order = scores.argsort(descending=True)
    b, g = boxes[order], groups[order]
    over = box_iou(b, mode) > threshold
    over &= g[:, None] == g[None]
    over = over.triu(1)  # row i suppresses column j only when i scored higher
    return order[~over.any(0)]


def square(boxes: torch.Tensor) -> torch.Tensor:
    """Boxes grown to squares about their centres (side = the longer side)."""
    wh = boxes[:, 2:] - boxes[:, :2]
    side = wh.max(1, keepdim=True).values
    tl = boxes[:, :2] + wh / 2 - side / 2
    return torch.cat([tl, tl + side], 1)


def crop_resize(image: torch.Tensor, boxes: torch.Tensor, size: int) -> torch.Tensor:
    """Bilinear (n, C, size, size) crops of a (C, H, W) image; samples outside the image are 0.

    Sample positions are the reference's (TensorFlow crop_and_resize with boxes divided by the image size,
    corners on the first and last sample), so that R-Net and O-Net see the crops it gives them.
    """
    c, h, w = image.shape
    t = torch.linspace(0, 1, size, device=image.device, dtype=image.dtype)
    ys = (boxes[:, 1:2] + (boxes[:, 3:4] - boxes[:, 1:2]) * t) * ((h - 1) / h)
    xs = (boxes[:, 0:1] + (boxes[:, 2:3] - boxes[:, 0:1]) * t) * ((w - 1) / w)
    y0, x0 = ys.floor(), xs.floor()
    wy, wx = (ys - y0)[:, None, :, None], (xs - x0)[:, None, None, :]
    y0i, x0i = y0.long().clamp(0, h - 1), x0.long().clamp(0, w - 1)
    y1i, x1i = (y0i + 1).clamp(max=h - 1), (x0i + 1).clamp(max=w - 1)

    def at(yi, xi):  # (n, C, size, size)
        return image[:, yi[:, :, None], xi[:, None, :]].permute(1, 0, 2, 3)

    top = at(y0i, x0i) + (at(y0i, x1i) - at(y0i, x0i)) * wx
    bottom = at(y1i, x0i) + (at(y1i, x1i) - at(y1i, x0i)) * wx
    out = top + (bottom - top) * wy
    inside = ((ys >= 0) & (ys <= h - 1))[:, None, :, None] & ((xs >= 0) & (xs <= w - 1))[:, None, None, :]
    return out * inside


def _cumsum0(x: torch.Tensor, axis: int) -> torch.Tensor:
    """Cumulative sum along `axis` (2 or 3) with a leading zero, in float64."""
    c = x.double().cumsum(axis)
    return torch.cat([torch.zeros_like(c.narrow(axis, 0, 1)), c], axis)


def _area_from_cumsum(c: torch.Tensor, axis: int, n: int) -> torch.Tensor:
    """Area-average to `n` samples along `axis`, from its cumulative sum `c` (length + 1 along that axis)."""
    length = c.shape[axis] - 1
    pos = torch.arange(n + 1, device=c.device, dtype=torch.float64) * (length / n)
    i = pos.floor().long().clamp(0, length - 1)
    frac = (pos - i).view(-1, 1) if axis == 2 else (pos - i)
    lo, hi = c.index_select(axis, i), c.index_select(axis, i + 1)
    return (lo + (hi - lo) * frac).diff(dim=axis) * (n / length)


def area_resize(x: torch.Tensor, size: tuple[int, int], row_cumsum: torch.Tensor | None = None) -> torch.Tensor:
    """(N, C, H, W) -> (N, C, *size) by exact area averaging (each output pixel the coverage-weighted mean
    of the input pixels under it), as TensorFlow's AREA resize that the reference uses. Per axis: a cumulative
    sum, read at fractional positions by linear interpolation, differenced; O(pixels), on any device. The sums
    are float64, so their differences keep float32 precision on large images. A pyramid passes the rows'
    cumulative sum (`_cumsum0(x, 2)`), computed once for all its levels."""
    rows = _area_from_cumsum(_cumsum0(x, 2) if row_cumsum is None else row_cumsum, 2, size[0])
    return _area_from_cumsum(_cumsum0(rows, 3), 3, size[1]).to(x.dtype)


def _cv2_area(x: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """`area_resize` of a CPU batch through OpenCV (INTER_AREA is exact area averaging when shrinking)."""
    import cv2
    planes = x.numpy()
    out = np.empty((*planes.shape[:2], *size), np.float32)
    for i in range(planes.shape[0]):
        for c in range(planes.shape[1]):
            out[i, c] = cv2.resize(planes[i, c], (size[1], size[0]), interpolation=cv2.INTER_AREA)
    return torch.from_numpy(out)


def pyramid_scales(height: int, width: int, min_face: float, factor: float = SCALE_FACTOR) -> list[float]:
    """Scales at which P-Net's 12-pixel window covers faces from `min_face` pixels upwards, while the scaled
    image still holds one window. Starting at 12 / min_face is what makes a larger `min_face` cheaper."""
    scales, s = [], 12.0 / min_face
    while int(min(height, width) * s) >= 12:
        scales.append(s)
        s *= factor
    return scales


def pyramid(batch: torch.Tensor, sizes: list[tuple[int, int]]) -> list[torch.Tensor]:
    """Area-averaged levels of a (N, C, H, W) batch, one per (height, width) in `sizes` (largest first).

    A level whose height and width divide those of a larger level exactly (108x108 -> 54x54) is averaged from
    that level: its pixels' boundaries fall on that level's, so the numbers are the image's own area averages
    (up to float rounding) for a fraction of the cost of reading the whole image again. On the CPU through
    OpenCV's INTER_AREA (the same exact average, within 5e-5, at a tenth of `area_resize`'s cost).
    """
    on_cpu = batch.device.type == "cpu"
    row_cumsum = None if on_cpu else _cumsum0(batch, 2)
    levels: list[torch.Tensor] = []
    for size in sizes:
        src = next((lv for lv in reversed(levels)
                    if lv.shape[-2] % size[0] == 0 and lv.shape[-1] % size[1] == 0), batch)
        if on_cpu:
            levels.append(_cv2_area(src, size))
        else:
            levels.append(area_resize(src, size, row_cumsum if src is batch else None))
    return levels


class Mtcnn:
    """Face boxes, scores and landmarks for batches of (H, W, 3) images, on CPU or CUDA.

    `__call__(images)` takes a list of float or uint8 (H, W, 3) or (H, W) arrays (or one) and returns, per image, a dict of
    numpy arrays: "boxes" (n, 4) x1, y1, x2, y2 in pixels, "scores" (n,) in 0-1, "landmarks" (n, 5, 2) x, y.
    Channel order is the caller's business: the reference was given RGB.
    """

    def __init__(self, device="cpu", min_face: float = 20.0, thresholds=THRESHOLDS,
                 scale_factor: float = SCALE_FACTOR, nms_thresholds=(0.5, 0.7, 0.7, 0.7)):
        if min_face < 1:
            raise ValueError(f"min_face must be >= 1 pixel, got {min_face}")
        self.device = torch.device(device)
        self.pnet, self.rnet, self.onet = load_nets(self.device)
        self.grey_nets = tuple(for_grey(net) for net in (self.pnet, self.rnet, self.onet))
        self.min_face, self.thresholds, self.scale_factor = float(min_face), tuple(thresholds), scale_factor
        self.nms_thresholds = tuple(nms_thresholds)

    @torch.no_grad()
    def __call__(self, images) -> list[dict]:
        single = not isinstance(images, (list, tuple))
        images = [images] if single else list(images)
        tensors = [self._input(im) for im in images]
        # grey pictures (one plane for all three channels) go through nets folded to one input channel
        nets = self.grey_nets if all(t.shape[0] == 1 for t in tensors) else (self.pnet, self.rnet, self.onet)
        tensors = [t.expand(3, -1, -1) if nets[0] is self.pnet else t for t in tensors]
        ids, boxes, scores = self._proposals(tensors, nets[0])
        ids, boxes, scores, _ = self._refine(tensors, ids, square(boxes), 24, nets[1])
        ids, boxes, scores, marks = self._refine(tensors, ids, square(boxes), 48, nets[2])
        out = []
        for i, t in enumerate(tensors):
            sel = ids == i
            h, w = t.shape[1:]
            b = boxes[sel]
            b = torch.stack([b[:, 0].clamp(0, w - 1), b[:, 1].clamp(0, h - 1),
                             b[:, 2].clamp(0, w - 1), b[:, 3].clamp(0, h - 1)], 1)
            out.append({"boxes": b.cpu().numpy().astype(np.float64), "scores": scores[sel].cpu().numpy().astype(np.float64),
                        "landmarks": marks[sel].cpu().numpy().astype(np.float64)})
        return out[0] if single else out

    def _input(self, image) -> torch.Tensor:
        """(H, W, 3) -> normalised (3, H, W), or (H, W) (one plane for all three channels) -> (1, H, W)."""
        t = torch.as_tensor(np.ascontiguousarray(image, dtype=np.float32), device=self.device)
        if t.ndim == 2:
            t = t[..., None]
        if t.ndim != 3 or t.shape[2] not in (1, 3):
            raise ValueError(f"expected an image of shape (H, W, 3) or (H, W), got {tuple(np.shape(image))}")
        return (t.permute(2, 0, 1) - 127.5) / 128.0

    def _proposals(self, tensors, pnet):
        """P-Net over each image's pyramid; images of one size share each level's forward pass."""
        by_shape: dict[tuple, list[int]] = {}
        for i, t in enumerate(tensors):
            by_shape.setdefault(tuple(t.shape[1:]), []).append(i)
        ids, boxes, scores = [], [], []
        for (h, w), members in by_shape.items():
            batch = torch.stack([tensors[i] for i in members])
            member = torch.tensor(members, device=self.device)
            scales = pyramid_scales(h, w, self.min_face, self.scale_factor)
            sizes = [(int(h * s), int(w * s)) for s in scales]  # truncated, as the reference's
            for s, level in zip(scales, pyramid(batch, sizes)):
                reg, prob = pnet(level)
                n, y, x = torch.nonzero(prob > self.thresholds[0], as_tuple=True)
                if len(n) == 0:
                    continue
                sc = prob[n, y, x]
                if len(sc) > MAX_PROPOSALS * len(members):
                    top = sc.topk(MAX_PROPOSALS * len(members)).indices
                    n, y, x, sc = n[top], y[top], x[top], sc[top]
                cell = torch.stack([x, y, x, y], 1).float() * 2 + torch.tensor([0, 0, 12, 12], device=self.device)
                b = (cell + reg[n, :, y, x] * 12) / s
                keep = nms(b, sc, n, self.nms_thresholds[0])
                ids.append(member[n[keep]])
                boxes.append(b[keep])
                scores.append(sc[keep])
        if not ids:
            return self._empty()
        ids, boxes, scores = torch.cat(ids), torch.cat(boxes), torch.cat(scores)
        keep = nms(boxes, scores, ids, self.nms_thresholds[1])
        return ids[keep], boxes[keep], scores[keep]

    def _refine(self, tensors, ids, boxes, size, net):
        """R-Net (size 24) or O-Net (size 48) on crops of the candidates: re-score, regress, filter, NMS."""
        if len(ids) == 0:
            return ids, boxes, boxes.new_zeros(0), boxes.new_zeros(0, 5, 2)
        # candidates regrouped image by image (keeping their order), so that each image's crops are cut at once
        order = ids.argsort(stable=True)
        ids, boxes = ids[order], boxes[order]
        crops = torch.cat([crop_resize(tensors[i], boxes[ids == i], size) for i in ids.unique().tolist()])
        wh = (boxes[:, 2:] - boxes[:, :2] + 1).repeat(1, 2)
        if size == 24:
            reg, prob = net(crops)
            marks = boxes.new_zeros(len(boxes), 5, 2)
            stage, mode = 1, "union"
        else:
            reg, lm, prob = net(crops)
            marks = torch.stack([lm[:, :5] * wh[:, :1] + boxes[:, :1] - 1,
                                 lm[:, 5:] * wh[:, 1:2] + boxes[:, 1:2] - 1], -1)
            stage, mode = 2, "min"
        boxes = boxes + reg * wh
        ok = prob > self.thresholds[stage]
        ids, boxes, prob, marks = ids[ok], boxes[ok], prob[ok], marks[ok]
        keep = nms(boxes, prob, ids, self.nms_thresholds[stage + 1], mode)
        return ids[keep], boxes[keep], prob[keep], marks[keep]

    def _empty(self):
        z = torch.zeros(0, device=self.device)
        return z.long(), z.view(0, 4), z
