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

Every stage is batched: images of one size go through each pyramid level together (in groups small enough
for the CPU's caches), and all candidates of all images through R-Net and O-Net in one forward each. NMS is
ferlab's own (`nms` below), a matrix form that runs on the device the boxes are on.

Where ferlab departs from the reference, for speed on large photos: the picture is read whole only once,
into means of small pixel blocks (`block_mean`, `base_block`: 2x2 at the default min_face 40), and the
pyramid levels are area-averaged from those instead of from the picture (on a 1920x1080 photo each level
read from the picture cost 7 ms); R-Net and O-Net sample their crops from the picture's own pixels, so no
float copy of the whole picture is ever made. Below min_face 36 the blocks are single pixels and the levels
are the reference's exact area averages.
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
PHASES = ((0, 0), (0, 1), (1, 0), (1, 1))  # offsets (rows, columns) within a 2x2 pooling window
# P-Net levels of at least this many pixels run their first layer as one strided convolution (PNet._first_layer):
# 2.7 instead of 8.2 ms at 324x576, 0.55 instead of 0.69 at 153x153; below it the plain layers are faster
PHASE_PIXELS = 16_384
THRESHOLDS = (0.6, 0.7, 0.8)
MAX_PROPOSALS = 4000     # per image and pyramid level, before NMS: bounds its IoU matrix on textured images
# pictures of one size go through P-Net together, a pyramid level at a time, in groups of up to this many
# pixels: past it their maps outgrow the CPU's caches and one forward pass costs more than several (8 first
# levels of 1920x1080 photos, 324x576 each: 340 ms together, 192 ms one at a time; 77x77 levels: 5 vs 7 ms)
PNET_BATCH_PIXELS = 60_000
NMS_CANDIDATES = 2000    # boxes one NMS matrix compares at most (16 MB), unless a single image's level has more


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
    """Keras MaxPooling2D(padding="same"): ceil(n / s) outputs, the padding split with the extra at the end.
    When it is all at the end (one row or column, as on every map these nets pool), the windows that reach
    past the end are simply cut short: the same numbers as padding with -inf, without a padded copy."""
    h, w = x.shape[-2:]
    ph = max((math.ceil(h / s) - 1) * s + k - h, 0)
    pw = max((math.ceil(w / s) - 1) * s + k - w, 0)
    if ph // 2 or pw // 2 or min(h, w) <= k:
        x = F.pad(x, (pw // 2, pw - pw // 2, ph // 2, ph - ph // 2), value=float("-inf"))
    elif ph or pw:
        return _max_cut(_max_cut(x, k, s, -2), k, s, -1)
    return max_pool(x, k, s)


def _max_cut(x: torch.Tensor, k: int, s: int, dim: int) -> torch.Tensor:
    """Maxima of windows of k at stride s along `dim`, ceil(n / s) of them, the last ones cut at the end."""
    n = x.shape[dim]
    o = -(-n // s)

    def offset(i):  # elements i, i + s, ... that exist: ceil((n - i) / s) of them, at most o
        m = min(o, -(-(n - i) // s))
        return x.narrow(dim, i, s * (m - 1) + 1)[(slice(None),) * (x.ndim + dim) + (slice(None, None, s),)], m

    first, _ = offset(0)
    second, m = offset(1)
    out = torch.maximum(first.narrow(dim, 0, m), second)
    if m < o:  # the last window holds one element only
        out = torch.cat([out, first.narrow(dim, m, o - m)], dim)
    for i in range(2, k):
        more, m = offset(i)
        part = out.narrow(dim, 0, m)
        torch.maximum(part, more, out=part)
    return out


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
        self.prepare()
        return self.eval().requires_grad_(False)

    def prepare(self) -> None:
        """Anything derived from the weights, rebuilt whenever they change (loaded, folded to one channel)."""


class PNet(_KerasNet):
    """Proposal net, fully convolutional: (N, 3, H, W) -> box offsets (N, 4, h, w), face probability (N, h, w)."""

    def __init__(self):
        super().__init__()
        self.conv1, self.prelu1 = nn.Conv2d(3, 10, 3), nn.PReLU(10)
        self.conv2, self.prelu2 = nn.Conv2d(10, 16, 3), nn.PReLU(16)
        self.conv3, self.prelu3 = nn.Conv2d(16, 32, 3), nn.PReLU(32)
        self.box, self.cls = nn.Conv2d(32, 4, 1), nn.Conv2d(32, 2, 1)

    def prepare(self) -> None:
        # conv1's 3x3 kernels placed at the 4 offsets of a 2x2 pooling window, in a 4x4 kernel: see _first_layer
        w = self.conv1.weight.data
        c = w.shape[0]
        phases = w.new_zeros(4 * c, w.shape[1], 4, 4)
        for i, (dy, dx) in enumerate(PHASES):
            phases[i * c:(i + 1) * c, :, dy:dy + 3, dx:dx + 3] = w
        self.register_buffer("phase_weight", phases, persistent=False)
        self.register_buffer("phase_bias", self.conv1.bias.data.repeat(4), persistent=False)
        self.register_buffer("phase_alpha", self.prelu1.weight.data.repeat(4), persistent=False)

    def forward(self, x):
        x = self._first_layer(x)
        x = self.prelu3(self.conv3(self.prelu2(self.conv2(x))))
        return self.box(x), self.cls(x).softmax(1)[:, 1]

    def _first_layer(self, x):
        """`_pool_same(prelu1(conv1(x)), 2, 2)` as one stride-2 convolution: the four conv1 outputs under each
        pooling window come out as 4 x 10 channels of a 4x4 kernel (conv1's at each of the window's offsets),
        get their PReLU, and the maximum over the four is taken. The same numbers (the kernel's added taps are
        zeros), without ever writing conv1's full-size map (large levels only: PHASE_PIXELS). On a map of odd
        size the last window holds fewer outputs; those that would read past the picture are set to -inf, as
        Keras' "same" padding does."""
        h, w = x.shape[-2:]
        if h * w < PHASE_PIXELS:
            return _pool_same(self.prelu1(self.conv1(x)), 2, 2)
        oh, ow = -(-(h - 2) // 2), -(-(w - 2) // 2)
        pad_h, pad_w = 2 * oh + 2 - h, 2 * ow + 2 - w  # 1 where conv1's map has an odd size
        if pad_h or pad_w:
            x = F.pad(x, (0, pad_w, 0, pad_h))
        y = F.prelu(F.conv2d(x, self.phase_weight, self.phase_bias, stride=2), self.phase_alpha)
        y = y.view(len(y), 4, -1, oh, ow)
        if pad_h:
            y[:, 2:, :, -1] = float("-inf")  # the offsets one row down
        if pad_w:
            y[:, 1::2, :, :, -1] = float("-inf")  # one column right
        return y.amax(1)


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
    grey.prepare()
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
        mode: str = "union", most: int = NMS_CANDIDATES) -> torch.Tensor:
    """Indices kept, best score first: a box goes when any better-scored box of its group overlaps it by more
    than `threshold` (the matrix form the reference uses: one IoU matrix, no sequential loop, so it runs as a
    few tensor ops on any device). `groups` (images, or an image's pyramid levels) never suppress each other,
    so past `most` candidates they are taken a few whole groups at a time: the matrix stays bounded however
    many groups there are."""
    if len(boxes) <= most:
        return _nms_matrix(boxes, scores, groups, threshold, mode)
    order = groups.argsort(stable=True)
    counts = torch.unique_consecutive(groups[order], return_counts=True)[1].tolist()
    keep, lo, hi = [], 0, 0
    for c in counts + [most + 1]:  # the sentinel flushes the last chunk
        if hi > lo and hi - lo + c > most:
            sel = order[lo:hi]
            keep.append(sel[_nms_matrix(boxes[sel], scores[sel], groups[sel], threshold, mode)])
            lo = hi
        hi += c
    keep = torch.cat(keep)
    return keep[scores[keep].argsort(descending=True)]


def _nms_matrix(boxes, scores, groups, threshold, mode):
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


def crop_resize(image: torch.Tensor, boxes: torch.Tensor, size: int, grey: bool = False) -> torch.Tensor:
    """Bilinear (n, C, size, size) crops of an (H, W, C) picture (uint8 or float, 0-255), normalised to
    (x - 127.5) / 128; samples outside the picture are 0. With `grey`, one channel: the mean of the picture's.

    Sample positions are the reference's (TensorFlow crop_and_resize with boxes divided by the image size,
    corners on the first and last sample), so that R-Net and O-Net see the crops it gives them. Only the
    4 n size^2 samples are read and turned to float (never the whole picture): sampling, the channel mean and
    the normalisation are linear, so their order does not change the numbers beyond float rounding.
    """
    h, w = image.shape[:2]
    t = torch.linspace(0, 1, size, device=image.device, dtype=torch.float32)
    ys = (boxes[:, 1:2] + (boxes[:, 3:4] - boxes[:, 1:2]) * t) * ((h - 1) / h)
    xs = (boxes[:, 0:1] + (boxes[:, 2:3] - boxes[:, 0:1]) * t) * ((w - 1) / w)
    y0, x0 = ys.floor(), xs.floor()
    wy, wx = (ys - y0)[:, :, None, None], (xs - x0)[:, None, :, None]
    y0i, x0i = y0.long().clamp(0, h - 1), x0.long().clamp(0, w - 1)
    y1i, x1i = (y0i + 1).clamp(max=h - 1), (x0i + 1).clamp(max=w - 1)
    # the four neighbours of every sample in one gather of whole pixels: (4, n, size, size, C)
    rows = torch.stack([y0i, y0i, y1i, y1i])[:, :, :, None] * w
    cols = torch.stack([x0i, x1i, x0i, x1i])[:, :, None, :]
    px = image.reshape(h * w, -1).index_select(0, (rows + cols).flatten())  # (4 n size^2, C)
    if grey:  # uint8 channels summed in int16: exact, so any channel order gives the same numbers
        px = px.sum(-1, keepdim=True, dtype=torch.int16 if px.dtype == torch.uint8 else None).float() / px.shape[-1]
    px = px.float().view(4, len(boxes), size, size, -1)
    top = px[0] + (px[1] - px[0]) * wx
    bottom = px[2] + (px[3] - px[2]) * wx
    out = (top + (bottom - top) * wy - 127.5) / 128.0  # (n, size, size, C)
    inside = ((ys >= 0) & (ys <= h - 1))[:, :, None, None] & ((xs >= 0) & (xs <= w - 1))[:, None, :, None]
    return (out * inside).permute(0, 3, 1, 2)


def block_mean(image: np.ndarray, k: int, grey: bool = False) -> np.ndarray:
    """(H, W, C) -> (H // k, W // k, C) float32: the mean of each k x k block (and with `grey` of the C channels
    too, giving one). The last H % k rows and W % k columns are left out. Exact for uint8 pictures: the sums
    are integers (uint16 while they fit), added from strided slices, a few times faster than numpy's sum over
    a short last axis and than OpenCV's INTER_AREA at a scale that is not a whole number."""
    h, w, c = image.shape[0] // k * k, image.shape[1] // k * k, image.shape[2]
    if image.dtype == np.uint8:
        acc = np.uint16 if k * k * c * 255 <= np.iinfo(np.uint16).max else np.uint32
    else:
        acc = np.float32
    rows = image[0:h:k, :w].astype(acc)
    for i in range(1, k):
        rows += image[i:h:k, :w]
    blocks = rows.reshape(h // k, w // k, k, c)  # a view: the k columns of each block, side by side
    if grey:
        blocks = blocks.reshape(h // k, w // k, k * c, 1)
    out = blocks[:, :, 0].copy()
    for j in range(1, blocks.shape[2]):
        out += blocks[:, :, j]
    return out.astype(np.float32) / np.float32(k * k * (c if grey else 1))


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


def base_block(first_scale: float) -> int:
    """The side of the pixel blocks the pyramid is averaged from: the largest whole number of pixels that
    still leaves each pixel of the first (largest) level 1.5 blocks wide or more. Its levels then differ from
    the picture's own area averages by 0.6 grey levels on average (by 1.3 with blocks as wide as a level
    pixel allows: 3 pixels at the default min_face 40, whose faces moved by up to 5 pixels), for about the
    same cost. 1 (no blocks: the exact averages) below min_face 36."""
    return max(1, int(2 / (3 * first_scale) + 1e-9))


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

    `__call__(images)` takes a list of float (0-255) or uint8 (H, W, 3) or (H, W) arrays (or one) and returns,
    per image, a dict of numpy arrays: "boxes" (n, 4) x1, y1, x2, y2 in pixels, "scores" (n,) in 0-1,
    "landmarks" (n, 5, 2) x, y, "sure" (n,) bool. Channel order is the caller's business: the reference was
    given RGB. With `grey`, the nets see the mean of each picture's channels (through nets folded to one input
    channel), so the order does not matter; pictures that are all (H, W) are always seen that way.

    `rescue` (P-Net, R-Net, O-Net thresholds below `thresholds`) lets candidates through at those lower scores
    too, for the caller to judge: a face that missed a threshold of `thresholds` anywhere comes back with
    "sure" False. The sure faces are exactly those found without `rescue`: at every NMS a sure candidate ranks
    above every other (its score + 1), so a rescued candidate never suppresses one. Without it (the default)
    the pipeline is the reference's and every face is sure.
    """

    def __init__(self, device="cpu", min_face: float = 20.0, thresholds=THRESHOLDS,
                 scale_factor: float = SCALE_FACTOR, nms_thresholds=(0.5, 0.7, 0.7, 0.7), grey: bool = False,
                 rescue=None):
        if min_face < 1:
            raise ValueError(f"min_face must be >= 1 pixel, got {min_face}")
        self.device = torch.device(device)
        self.pnet, self.rnet, self.onet = load_nets(self.device)
        self.grey_nets = tuple(for_grey(net) for net in (self.pnet, self.rnet, self.onet))
        self.min_face, self.thresholds, self.scale_factor = float(min_face), tuple(thresholds), scale_factor
        self.nms_thresholds = tuple(nms_thresholds)
        self.grey = bool(grey)
        # the thresholds a candidate must pass at all: the lower of the two at each stage
        self.floors = tuple(map(min, self.thresholds, rescue)) if rescue is not None else self.thresholds

    @torch.no_grad()
    def __call__(self, images) -> list[dict]:
        single = not isinstance(images, (list, tuple))
        arrays = [_check(im) for im in ([images] if single else images)]
        grey = self.grey or all(a.shape[2] == 1 for a in arrays)
        nets = self.grey_nets if grey else (self.pnet, self.rnet, self.onet)
        ids, boxes, scores, sure = self._proposals(arrays, grey, nets[0])
        # R-Net and O-Net sample their crops from the pictures themselves, never from a float copy of them
        pictures = [torch.from_numpy(a).to(self.device) for a in arrays]
        ids, boxes, scores, sure, _ = self._refine(pictures, grey, ids, square(boxes), sure, 24, nets[1])
        ids, boxes, scores, sure, marks = self._refine(pictures, grey, ids, square(boxes), sure, 48, nets[2])
        out = []
        for i, a in enumerate(arrays):
            sel = ids == i
            h, w = a.shape[:2]
            b = boxes[sel]
            b = torch.stack([b[:, 0].clamp(0, w - 1), b[:, 1].clamp(0, h - 1),
                             b[:, 2].clamp(0, w - 1), b[:, 3].clamp(0, h - 1)], 1)
            out.append({"boxes": b.cpu().numpy().astype(np.float64), "scores": scores[sel].cpu().numpy().astype(np.float64),
                        "landmarks": marks[sel].cpu().numpy().astype(np.float64), "sure": sure[sel].cpu().numpy()})
        return out[0] if single else out

    def _base(self, arrays: list[np.ndarray], k: int, grey: bool) -> torch.Tensor:
        """(N, C, H // k, W // k) float32 means of k x k blocks (0-255) of pictures of one size, where the
        pyramid's levels are averaged from: one cheap whole-picture pass instead of a fractional area resize of
        the picture per level."""
        channels = 1 if grey else 3  # a grey picture among colour ones: 3 equal planes for the colour nets
        if self.device.type == "cpu":
            means = [block_mean(a, k, grey) for a in arrays]
            base = torch.from_numpy(np.stack([np.broadcast_to(m, (*m.shape[:2], channels)) for m in means]))
            return base.permute(0, 3, 1, 2).contiguous()
        x = torch.stack([torch.from_numpy(a).to(self.device).float().expand(-1, -1, 3 if a.shape[2] == 1 else -1)
                         for a in arrays]).permute(0, 3, 1, 2)
        x = x.mean(1, keepdim=True) if grey else x
        return (F.avg_pool2d(x, k) if k > 1 else x).contiguous()

    def _proposals(self, arrays, grey, pnet):
        """P-Net over each image's pyramid; images of one size share each level's forward pass."""
        by_shape: dict[tuple, list[int]] = {}
        for i, a in enumerate(arrays):
            by_shape.setdefault(a.shape[:2], []).append(i)
        # every level's candidates first, then one NMS for all levels and images (each its own group): one
        # call instead of one per level, most of whose cost was the call itself (levels hold a few boxes)
        ids, groups, boxes, scores = [], [], [], []
        for (h, w), members in by_shape.items():
            scales = pyramid_scales(h, w, self.min_face, self.scale_factor)
            if not scales:
                continue
            member = torch.tensor(members, device=self.device)
            k = base_block(scales[0])
            base = self._base([arrays[i] for i in members], k, grey)
            sizes = [(int(h * s), int(w * s)) for s in scales]  # truncated, as the reference's
            for s, level in zip(scales, pyramid(base, sizes)):
                level = (level - 127.5) / 128.0  # normalised after averaging: the same numbers, fewer of them
                chunk = max(1, PNET_BATCH_PIXELS // (level.shape[-2] * level.shape[-1]))
                if chunk >= len(members):
                    reg, prob = pnet(level)
                else:
                    regs, probs = zip(*(pnet(level[i:i + chunk]) for i in range(0, len(members), chunk)))
                    reg, prob = torch.cat(regs), torch.cat(probs)
                n, y, x = torch.nonzero(prob > self.floors[0], as_tuple=True)
                if len(n) > 0:
                    sc = prob[n, y, x]
                    if len(sc) > MAX_PROPOSALS * len(members):
                        top = sc.topk(MAX_PROPOSALS * len(members)).indices
                        n, y, x, sc = n[top], y[top], x[top], sc[top]
                    cell = torch.stack([x, y, x, y], 1).float() * 2 + torch.tensor([0, 0, 12, 12], device=self.device)
                    ids.append(member[n])
                    groups.append(ids[-1] + len(groups) * len(arrays))  # one group per image and level
                    boxes.append((cell + reg[n, :, y, x] * 12) / s)
                    scores.append(sc)
        if not ids:
            z = torch.zeros(0, device=self.device)
            return z.long(), z.view(0, 4), z, z.bool()
        ids, groups, boxes, scores = torch.cat(ids), torch.cat(groups), torch.cat(boxes), torch.cat(scores)
        sure = scores > self.thresholds[0]
        keep = nms(boxes, scores + sure, groups, self.nms_thresholds[0])  # within each image's level
        ids, boxes, scores, sure = ids[keep], boxes[keep], scores[keep], sure[keep]
        keep = nms(boxes, scores + sure, ids, self.nms_thresholds[1])  # across an image's levels
        return ids[keep], boxes[keep], scores[keep], sure[keep]

    def _refine(self, pictures, grey, ids, boxes, sure, size, net):
        """R-Net (size 24) or O-Net (size 48) on crops of the candidates: re-score, regress, filter, NMS."""
        if len(ids) == 0:
            return ids, boxes, boxes.new_zeros(0), sure, boxes.new_zeros(0, 5, 2)
        # candidates regrouped image by image (keeping their order), so that each image's crops are cut at once
        order = ids.argsort(stable=True)
        ids, boxes, sure = ids[order], boxes[order], sure[order]
        # (a grey picture's crops given to the colour nets: 3 equal planes)
        crops = torch.cat([crop_resize(pictures[i], boxes[ids == i], size, grey).expand(-1, 1 if grey else 3, -1, -1)
                           for i in ids.unique().tolist()])
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
        ok = prob > self.floors[stage]
        sure = sure & (prob > self.thresholds[stage])
        ids, boxes, prob, sure, marks = ids[ok], boxes[ok], prob[ok], sure[ok], marks[ok]
        keep = nms(boxes, prob + sure, ids, self.nms_thresholds[stage + 1], mode)
        return ids[keep], boxes[keep], prob[keep], sure[keep], marks[keep]


def _check(image) -> np.ndarray:
    """A picture as a contiguous, writable (H, W, C) uint8 or float32 array, C 1 or 3."""
    a = np.asarray(image)
    if a.ndim == 2:
        a = a[..., None]
    if a.ndim != 3 or a.shape[2] not in (1, 3):
        raise ValueError(f"expected an image of shape (H, W, 3) or (H, W), got {tuple(np.shape(image))}")
    a = np.ascontiguousarray(a if a.dtype == np.uint8 else a.astype(np.float32, copy=False))
    return a if a.flags.writeable else a.copy()  # torch.from_numpy warns on read-only memory
