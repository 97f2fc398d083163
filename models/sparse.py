"""Sparse execution: compute a residual unit only where its output is used, so skipped work takes
no time (the authors' code for SACT and ConvNet-AIG computes everything and multiplies by a mask).

Every adaptive model has `model.execution`, an `Execution` (the strings "sparse" and "masked" are
accepted wherever it is set, and `Execution.of` turns them into the enum):

    Execution.SPARSE  "sparse" (default) at inference, skip what the masks say is not needed
    Execution.MASKED  "masked" the reference: compute every unit everywhere, multiply by the mask
    Execution.TILES   "tiles" SACT: a unit's residual branch on the batch of its active tiles with
                      their halo (models/tiles.py, as SBNet); a model without a tile path
                      (`has_tile_path`: ACT, ConvNet-AIG, the RNNs) runs "sparse" for it

All give the same logits and traces (tests/test_sparse.py, tests/test_tiles.py). Training always
takes the masked path (BatchNorm then uses batch statistics, which a subset of positions would
change).

Per call, without touching the module (the server runs an interactive request at batch 1 and a
background job at batch 250 on one module at once): `with executing("masked"): model.trace(x)`
overrides `model.execution` for the traces of this thread (a context variable, as models/whatif.py
keeps its change). `ponderscope.core.execution` plans which one runs, per device and batch size.
A model whose two executions are one code path (a dense ResNet, a plain RNN) says so with
`has_sparse_path = False`; there is nothing to choose (`has_sparse_path(model)`).

SACT (per position): a unit l >= 2 of a block updates x only at the active positions A (those not
yet halted): x_l = x_{l-1} + R_l(x_{l-1}) on A, unchanged elsewhere. Its last convolutions are
needed on A, its first 3x3 convolution's *output* on D = dilate(A) (the 3x3 neighbourhood the next
3x3 conv reads). The block's activations are kept as an NHWC matrix, one row per position, so a
set of positions is a set of rows:

    1x1 conv on a set      rows[set] @ W                        (gather + matrix product)
    3x3 conv on a set      patches[set] @ W   with patches = 9 rows around each position of the
                           zero-padded map, gathered and laid side by side (per-position im2col)
    eval BatchNorm         a per-channel affine, so it applies to gathered rows as well; a BN
                           right after a conv is folded into the conv's weights and bias
    scatter back           x.index_add(rows of A, R_l)

A 3x3 conv whose set covers most of the map runs the dense kernel on the whole map instead, where
that measured faster (`DENSE_3X3_ABOVE`, from bench/kernels.py); when that is a unit's last 3x3
conv, the unit's update is computed everywhere and added through the mask (x + R * [A]), which
costs less than gathering and scattering nearly every row. A unit with every position active
runs as the dense module, except at the widths where the product beats the dense kernel even at
full density (256 and 512 wide, on 14x14 and 7x7 maps).

ACT (per image) and ConvNet-AIG (per image): the unit / block runs on the sub-batch of images that
need it (index_select), and the result is added back (index_add).
"""
from __future__ import annotations

import contextlib
import enum
import functools
from contextvars import ContextVar
from typing import Iterator, Optional

import torch
import torch.nn as nn
import torch.nn.functional as F


class Execution(enum.StrEnum):
    """How an adaptive model runs at inference. A str enum: its values are the strings that cards,
    the CLI and the API use (`model.execution == "sparse"` holds, and JSON writes "sparse")."""

    SPARSE = "sparse"
    MASKED = "masked"
    TILES = "tiles"

    @classmethod
    def of(cls, value: "Execution | str") -> "Execution":
        """The one conversion of a setting ("sparse", "masked" or an Execution) to the enum."""
        try:
            return cls(value)
        except ValueError:
            raise ValueError(f"execution must be one of {EXECUTION_MODES}, not {value!r}") from None


EXECUTION_MODES = tuple(mode.value for mode in Execution)


# The execution in force for this thread's traces (None: each model's own `model.execution`).
_OVERRIDE: ContextVar[Optional[Execution]] = ContextVar("ponderscope_execution", default=None)


@contextlib.contextmanager
def executing(execution: "Execution | str | None") -> Iterator[Optional[Execution]]:
    """Run the traces inside with `execution` ("sparse" / "masked"; None: the models' own), in this
    thread (and context) only: another thread's traces of the same module are not affected."""
    token = _OVERRIDE.set(None if execution is None else Execution.of(execution))
    try:
        yield _OVERRIDE.get()
    finally:
        _OVERRIDE.reset(token)


def requested_execution(model: nn.Module) -> Execution:
    """The execution asked of `model` now: the one in force (`executing`), else `model.execution`
    (checked); "tiles" on a model without a tile path is "sparse"."""
    override = _OVERRIDE.get()
    execution = override if override is not None else Execution.of(model.execution)
    if execution is Execution.TILES and not getattr(model, "has_tile_path", False):
        return Execution.SPARSE
    return execution


def execution_of(model: nn.Module) -> Execution:
    """The execution a model's forward takes now: `requested_execution`, and masked while
    training (BatchNorm then uses batch statistics, which a subset of positions would change)."""
    execution = requested_execution(model)
    return Execution.MASKED if model.training else execution


def has_sparse_path(model: nn.Module) -> bool:
    """Whether sparse and masked execution are different code for `model` (so that one can be
    faster): it has an `execution` and does not declare `has_sparse_path = False`."""
    return hasattr(model, "execution") and bool(getattr(model, "has_sparse_path", True))


def has_tile_path(model: nn.Module) -> bool:
    """Whether "tiles" is code of its own for `model` (a SACT ResNet: `has_tile_path = True`),
    rather than another name for "sparse"."""
    return has_sparse_path(model) and bool(getattr(model, "has_tile_path", False))


# Rows per chunk of a gathered 3x3 conv: bounds the gathered patches (rows x 9 x width floats) to a
# few MB, so that they stay in cache while they are multiplied, whatever the batch (one big gather
# at batch 32 would be hundreds of MB). Chunks of 1-4k rows measured alike; 256 was slower.
CHUNK_ROWS = 2048

# A 3x3 conv on a position set runs densely (the dense kernel on the whole map, then the rows
# taken out) when the set holds more than this fraction of the map, by the conv's width (a width
# not listed takes the entry of the next narrower one listed, or of the narrowest). From
# bench/kernels.py (2-core AMD EPYC, AVX2, one thread): gather + product costs 1.0-1.3x the
# dense kernel at full density and falls linearly with the fraction; the dense kernel is the
# better choice above ~0.6 for 64 wide on 56x56, ~0.85 for 128 on 28x28, and never for 256 on
# 14x14 or 512 on 7x7, where the dense kernel is slow (1.0: never); on narrow convs with a large
# batch the gather loses sooner (24 wide, batch 32: above ~0.4). Block tiles (8x8 tiles with a
# halo through the dense kernel) were never the fastest and are not used.
DENSE_3X3_ABOVE = {16: 0.4, 24: 0.4, 32: 0.5, 48: 0.7, 64: 0.6, 96: 0.8, 128: 0.85, 256: 1.0, 512: 1.0}


def dense_3x3_above(width: int) -> float:
    """Active fraction above which a 3x3 conv of this width runs densely (1.0: never)."""
    narrower = [w for w in DENSE_3X3_ABOVE if w <= width]
    return DENSE_3X3_ABOVE[max(narrower) if narrower else min(DENSE_3X3_ABOVE)]


# ----------------------------------------------------------------------------------------------
# Weights: BN folded into the conv before it, laid out for row-major products. Cached per module
# (keyed on the parameters' storage and version, so loading weights or an optimiser step
# refreshes them); rebuilt on every call when autograd needs them.
# ----------------------------------------------------------------------------------------------


def bn_affine(bn: nn.BatchNorm2d) -> tuple[torch.Tensor, torch.Tensor]:
    """Eval BatchNorm as y = x * scale + shift (per channel)."""
    scale = bn.weight * torch.rsqrt(bn.running_var + bn.eps)
    return scale, bn.bias - bn.running_mean * scale


def folded_conv(conv: nn.Conv2d, bn_after: nn.BatchNorm2d | None = None) -> tuple[torch.Tensor, torch.Tensor | None]:
    """conv.weight [Cout, Cin, kh, kw] and a bias with the BN that follows folded in:
    bn(conv(x)) = conv(x; weight * scale) + shift."""
    if bn_after is None:
        return conv.weight, None
    scale, shift = bn_affine(bn_after)
    return conv.weight * scale[:, None, None, None], shift


def as_matrix(kernel: torch.Tensor) -> torch.Tensor:
    """[Cout, Cin, kh, kw] -> [kh*kw*Cin, Cout], rows in the (ky, kx, cin) order of the patches
    gathered below (`Grid.patch_rows`), so a conv at n positions is patches [n, 9*Cin] @ matrix."""
    return kernel.permute(2, 3, 1, 0).reshape(-1, kernel.shape[0]).contiguous()


def dense_kernel(kernel: torch.Tensor) -> torch.Tensor:
    """The kernel for F.conv2d on channels-last maps, stored channels-last (no reorder per call)."""
    return kernel.contiguous(memory_format=torch.channels_last)


# The (out, in) channels of the 3x3 kernels that run prepacked: where it measured faster and never
# slower (one thread, batch 1 and 4, maps 7x7 to 30x40, stride 1 and 2: 256 wide 1.45 -> 1.18 ms
# on 14x14, 512 wide 2.1 -> 1.4 ms). Elsewhere oneDNN's op can be far slower than F.conv2d on the
# same kernel: 96 wide on 7x7 3.8 ms against 0.07, 384 wide up to 60 ms against 1-17.
PACKED_WIDTHS = {(256, 256), (512, 512)}


def packed_kernel(kernel: torch.Tensor, stride: int, padding: int) -> Optional[torch.Tensor]:
    """oneDNN's own layout of a conv kernel (for that stride and padding), made once with the
    weights (`cached`): F.conv2d reorders its kernel on every call, which at batch 1 is about a
    third of a 512-wide 3x3 conv's time on a 7x7 or 14x14 map (bench/README.md, issue 21 item 4).
    None where it does not apply (not a float32 CPU kernel of `PACKED_WIDTHS`, a torch without oneDNN's ops):
    `conv_dense` then runs F.conv2d, as it does whenever autograd is on."""
    if kernel.device.type != "cpu" or kernel.dtype != torch.float32 or torch.is_grad_enabled() or not torch.backends.mkldnn.is_available():
        return None
    if tuple(kernel.shape[:2]) not in PACKED_WIDTHS:
        return None
    try:
        return torch._C._nn.mkldnn_reorder_conv2d_weight(kernel.contiguous().to_mkldnn(), [padding] * 2, [stride] * 2, [1, 1], 1, [])
    except (AttributeError, RuntimeError, NotImplementedError):
        return None


def conv_dense(x: torch.Tensor, kernel: torch.Tensor, packed: Optional[torch.Tensor], bias: Optional[torch.Tensor],
               stride: int, padding: int, slope: Optional[float] = None) -> torch.Tensor:
    """A conv on a whole map, F.conv2d(x, kernel, bias, stride, padding), then the activation of
    `slope` (None: none): by oneDNN's op on the `packed` kernel where there is one and x is a
    float32 channels-last CPU map (ReLU fused in; the numbers F.conv2d gives: tests/test_sparse.py),
    else by F.conv2d."""
    # (oneDNN's op has no autograd: with autograd on, as for input gradients of frozen weights, F.conv2d)
    if (packed is not None and not torch.is_grad_enabled() and x.dtype == torch.float32 and x.device.type == "cpu"
            and x.is_contiguous(memory_format=torch.channels_last)):
        fused = slope == 0.0
        out = torch.ops.mkldnn._convolution_pointwise(x, packed, bias, [padding] * 2, [stride] * 2, [1, 1], 1,
                                                      "relu" if fused else "none", [], "")
        return out if fused or slope is None else activate_(out, slope)
    out = F.conv2d(x, kernel, bias, stride, padding)
    return out if slope is None else activate_(out, slope)


def _unit_weights(unit: nn.Module) -> dict:
    """Matrices (w*), biases (b*) and, for the dense fallback, 3x3 kernels (k*) of a unit, and
    the slopes of its activations (0: ReLU) after bn1 and after the inner BNs; a 1x1 projection
    shortcut as the matrix ws and its bias bs (None without one)."""
    scale1, shift1 = bn_affine(unit.bn1)
    projection = getattr(unit, "shortcut", None)
    shared = dict(slope=unit.style.negative_slope, inner_slope=unit.style.inner_negative_slope,
                  ws=None if projection is None else as_matrix(projection.weight), bs=None if projection is None else projection.bias)
    if hasattr(unit, "conv3"):  # bottleneck: bn1 act conv1(1x1) bn2 act conv2(3x3) bn3 act conv3(1x1)
        k1, b1 = folded_conv(unit.conv1, unit.bn2)
        k2, b2 = folded_conv(unit.conv2, unit.bn3)
        k3, _ = folded_conv(unit.conv3)
        return dict(scale1=scale1, shift1=shift1, w1=as_matrix(k1), b1=b1, w2=as_matrix(k2), k2=dense_kernel(k2), b2=b2,
                    p2=packed_kernel(k2, unit.conv2.stride[0], unit.conv2.padding[0]), w3=as_matrix(k3), b3=unit.conv3.bias, **shared)
    k1, b1 = folded_conv(unit.conv1, unit.bn2)  # basic: bn1 act conv1(3x3) bn2 act conv2(3x3)
    k2, _ = folded_conv(unit.conv2)
    return dict(scale1=scale1, shift1=shift1, w1=as_matrix(k1), k1=dense_kernel(k1), b1=b1, w2=as_matrix(k2),
                k2=dense_kernel(k2), b2=unit.conv2.bias, p1=packed_kernel(k1, unit.conv1.stride[0], unit.conv1.padding[0]),
                p2=packed_kernel(k2, 1, 1), **shared)


def activate_(x: torch.Tensor, slope: float) -> torch.Tensor:
    """ReLU (slope 0) or leaky ReLU, in place."""
    return x.relu_() if slope == 0.0 else F.leaky_relu_(x, slope)


class DerivedWeights:
    """An entry of `cached`: the key it was built for and what was built. Not copied with its
    module (copy.deepcopy gives None, so a copy builds its own): oneDNN's packed kernels cannot
    be copied, and a copy's parameters are other tensors anyway."""

    __slots__ = ("key", "value")

    def __init__(self, key, value):
        self.key, self.value = key, value

    def __deepcopy__(self, memo):
        return None


def cached(module: nn.Module, build, also: tuple[nn.Module, ...] = ()):
    """build(module) -> weights derived from the parameters and buffers of `module` (and of the
    modules `also`), cached on `module` while those are unchanged (keyed on storage and version:
    loading weights, .to() or an optimiser step refreshes them). Rebuilt on every call when
    autograd needs them."""
    leaves = module.__dict__.get("_sparse_leaves")  # the modules whose tensors are read (fixed)
    if leaves is None:
        leaves = module.__dict__["_sparse_leaves"] = [m for owner in (module, *also) for m in owner.modules()]
    tensors = [t for m in leaves for t in (*m._parameters.values(), *m._buffers.values()) if t is not None]
    if torch.is_grad_enabled() and any(t.requires_grad for t in tensors):
        return build(module)  # differentiable, not cached
    key = tuple((t.data_ptr(), t._version) for t in tensors)
    entry = module.__dict__.get("_sparse_cache")
    if entry is None or entry.key != key:
        with torch.no_grad():
            entry = DerivedWeights(key, build(module))
        module.__dict__["_sparse_cache"] = entry  # a plain attribute: not a parameter, not saved
    return entry.value


def unit_weights(unit: nn.Module) -> dict:
    return cached(unit, _unit_weights)


# ----------------------------------------------------------------------------------------------
# Sub-batches of images (ACT, ConvNet-AIG), keeping the memory format
# ----------------------------------------------------------------------------------------------


def _nhwc(x: torch.Tensor) -> bool:
    return x.dim() == 4 and not x.is_contiguous() and x.is_contiguous(memory_format=torch.channels_last)


def select_images(x: torch.Tensor, images: torch.Tensor) -> torch.Tensor:
    """x[images] for a [B, C, H, W] map; a channels-last map stays channels-last (index_select
    alone would return NCHW, and the convolutions after it would reorder)."""
    if _nhwc(x):
        return x.permute(0, 2, 3, 1).index_select(0, images).permute(0, 3, 1, 2)
    return x.index_select(0, images)


def add_images(x: torch.Tensor, images: torch.Tensor, update: torch.Tensor, inplace: bool = False) -> torch.Tensor:
    """x with update[i] added to image images[i], in x's memory format (in place if asked)."""
    if _nhwc(x):
        view, update = x.permute(0, 2, 3, 1), update.permute(0, 2, 3, 1)
        return (view.index_add_(0, images, update) if inplace else view.index_add(0, images, update)).permute(0, 3, 1, 2)
    return x.index_add_(0, images, update) if inplace else x.index_add(0, images, update)


def put_images(x: torch.Tensor, images: torch.Tensor, values: torch.Tensor, inplace: bool = False) -> torch.Tensor:
    """x with image images[i] replaced by values[i], in x's memory format (in place if asked)."""
    if _nhwc(x):
        view, values = x.permute(0, 2, 3, 1), values.permute(0, 2, 3, 1)
        return (view.index_copy_(0, images, values) if inplace else view.index_copy(0, images, values)).permute(0, 3, 1, 2)
    return x.index_copy_(0, images, values) if inplace else x.index_copy(0, images, values)


# ----------------------------------------------------------------------------------------------
# Tokens of a sequence: each row's chosen tokens gathered, padded to the longest row (A-ViT's
# running tokens, the byte transformers' running or routed bytes)
# ----------------------------------------------------------------------------------------------


def gather_index(mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """mask [B, T] bool -> (index [B, M], valid [B, M]): each row's True positions in order, then
    padding (index of a False position, valid False), M the largest count of a row."""
    counts = mask.sum(1)
    most = int(counts.max()) if mask.numel() else 0
    order = torch.argsort(mask.to(torch.int8), dim=1, descending=True, stable=True)[:, :most]
    valid = torch.arange(most, device=mask.device) < counts.unsqueeze(1)
    return order, valid


def gathered(x: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    """x [B, T, d] at index [B, M] -> [B, M, d]."""
    return x.gather(1, index.unsqueeze(-1).expand(-1, -1, x.shape[-1]))


# ----------------------------------------------------------------------------------------------
# Positions as rows
# ----------------------------------------------------------------------------------------------


@functools.lru_cache(maxsize=64)
def grid(batch: int, height: int, width: int, device: torch.device) -> "Grid":
    """The Grid of a map shape (its index tensors are built once per shape)."""
    return Grid(batch, height, width, device)


@functools.lru_cache(maxsize=64)
def tap_index(batch: int, height: int, width: int, taps: int, device: torch.device) -> torch.Tensor:
    """[B*H*W*9] flat indices into a zero-padded tap map [B, H+2, W+2, taps]: for each position
    its 9 neighbours (ky, kx), each at its own tap 3 ky + kx (how a conv to one channel is
    summed from per-tap partial products)."""
    padded = torch.arange(batch * (height + 2) * (width + 2), device=device).view(batch, height + 2, width + 2)
    corner = padded[:, :height, :width].reshape(-1, 1)  # the (ky, kx) = (0, 0) neighbour
    offsets = torch.tensor([(ky * (width + 2) + kx) * taps + 3 * ky + kx for ky in range(3) for kx in range(3)],
                           device=device)
    return (corner * taps + offsets).reshape(-1)


class Grid:
    """The positions of a [B, H, W] map as rows of an NHWC matrix [B*H*W, C], and of its copy
    zero-padded by one pixel [B*(H+2)*(W+2), C] (what a 3x3 conv with padding 1 reads)."""

    def __init__(self, batch: int, height: int, width: int, device):
        self.shape = (batch, height, width)
        self.padded_shape = (batch, height + 2, width + 2)
        self.padded_rows = batch * (height + 2) * (width + 2)
        padded = torch.arange(self.padded_rows, device=device).view(self.padded_shape)
        self.to_padded = padded[:, 1:-1, 1:-1].reshape(-1)  # row of the map -> row of the padded map
        # Offsets of the 3x3 neighbours in the padded map, in the (ky, kx) order of `as_matrix`.
        self.offsets = torch.tensor([dy * (width + 2) + dx for dy in (-1, 0, 1) for dx in (-1, 0, 1)], device=device)

    @property
    def positions(self) -> int:
        batch, height, width = self.shape
        return batch * height * width

    @staticmethod
    def rows(mask: torch.Tensor) -> torch.Tensor:
        """[B, H, W] bool -> the rows (flat NHWC positions) where it is True, ascending."""
        return mask.reshape(-1).nonzero().squeeze(1)

    def patch_rows(self, rows: torch.Tensor) -> torch.Tensor:
        """[n] rows -> [n*9] rows of the padded map: each position's 3x3 neighbourhood."""
        return (self.to_padded[rows, None] + self.offsets).reshape(-1)

    def scatter_padded(self, rows: torch.Tensor, values: torch.Tensor) -> torch.Tensor:
        """A zero padded map [B*(H+2)*(W+2), C] holding `values` at `rows` and zero elsewhere."""
        return values.new_zeros(self.padded_rows, values.shape[1]).index_copy_(0, self.to_padded[rows], values)

    def pad(self, full: torch.Tensor) -> torch.Tensor:
        """A whole map [B*H*W, C] -> its zero-padded copy [B*(H+2)*(W+2), C]."""
        return F.pad(full.reshape(*self.shape, -1), (0, 0, 1, 1, 1, 1)).view(self.padded_rows, -1)

    def image_of(self, rows: torch.Tensor) -> torch.Tensor:
        """[n] rows -> [n] the image each belongs to (rows are image-major)."""
        return torch.div(rows, self.positions // self.shape[0], rounding_mode="floor")

    def scatter(self, rows: torch.Tensor, values: torch.Tensor) -> torch.Tensor:
        """A map [B*H*W, C] holding `values` at `rows` and zero elsewhere."""
        return values.new_zeros(self.positions, values.shape[1]).index_copy_(0, rows, values)

    def as_nchw(self, matrix: torch.Tensor) -> torch.Tensor:
        """[B*H*W, C] rows -> a [B, C, H, W] view (channels-last strides; no copy)."""
        return matrix.view(*self.shape, -1).permute(0, 3, 1, 2)


def conv3x3_rows(grid: Grid, padded: torch.Tensor, rows: torch.Tensor, weight: torch.Tensor,
                 bias: torch.Tensor | None, slope: float | None, then: torch.Tensor | None = None) -> torch.Tensor:
    """A stride-1 3x3 conv evaluated at `rows` only: act?(patches @ weight + bias) [@ then]
    (slope: of the activation, None for none).

    padded: the zero-padded input map as rows. Chunked so each chunk's patches stay in cache;
    `then` (a 1x1 conv's matrix) is applied chunk by chunk for the same reason."""
    pieces = []
    for start in range(0, rows.numel(), CHUNK_ROWS):
        chunk = rows[start : start + CHUNK_ROWS]
        patches = padded.index_select(0, grid.patch_rows(chunk)).view(chunk.numel(), -1)
        out = patches @ weight if bias is None else torch.addmm(bias, patches, weight)
        if slope is not None:
            out = activate_(out, slope)
        pieces.append(out if then is None else out @ then)
    if not pieces:
        return padded.new_zeros(0, (weight if then is None else then).shape[1])
    return pieces[0] if len(pieces) == 1 else torch.cat(pieces)


def as_rows(maps: torch.Tensor) -> torch.Tensor:
    """A map [B, C, H, W] as rows [B*H*W, C] (a view when it is channels-last): `Grid.as_nchw`'s inverse."""
    return maps.permute(0, 2, 3, 1).reshape(-1, maps.shape[1])


def conv3x3_map(grid: Grid, full: torch.Tensor, kernel: torch.Tensor, packed: Optional[torch.Tensor], bias: torch.Tensor | None,
                slope: Optional[float] = None) -> torch.Tensor:
    """The dense kernel on the whole map given as rows [B*H*W, Cin] -> rows [B*H*W, Cout]
    (`conv_dense`: stride 1, padding 1, then the activation of `slope`, None: none)."""
    out = conv_dense(grid.as_nchw(full), kernel, packed, bias, 1, 1, slope)  # channels-last in and out
    return as_rows(out)


def conv3x3(grid: Grid, values: torch.Tensor, have: torch.Tensor | None, want: torch.Tensor | None,
            w: dict, name: str, activate: bool, then: torch.Tensor | None = None):
    """A stride-1 3x3 conv (padding 1) of a map known at the rows `have` (values [len(have), Cin];
    None: every row), evaluated at the rows `want` (None: every row). The caller guarantees that
    `have` holds the 3x3 neighbourhood of `want`, so the unknown rows may read as zero.
    w[f"w{name}"], w[f"k{name}"], w[f"b{name}"]: the conv as a matrix, as a kernel, its bias.

    Returns (out, rows): out[i] is the output (activated, times `then`) at rows[i]; rows None means
    the dense kernel ran on the whole map and out covers every row, wanted or not (cheaper than
    gathering when most rows are wanted: `DENSE_3X3_ABOVE`)."""
    positions = grid.positions
    wanted = positions if want is None else want.numel()
    if wanted > dense_3x3_above(values.shape[1]) * positions:
        full = values if have is None else grid.scatter(have, values)
        out = conv3x3_map(grid, full, w[f"k{name}"], w[f"p{name}"], w[f"b{name}"], w["inner_slope"] if activate else None)
        return (out if then is None else out @ then), None
    padded = grid.pad(values) if have is None else grid.scatter_padded(have, values)
    rows = torch.arange(positions, device=values.device) if want is None else want
    return conv3x3_rows(grid, padded, rows, w[f"w{name}"], w[f"b{name}"], w["inner_slope"] if activate else None, then), rows


# ----------------------------------------------------------------------------------------------
# Residual branches of the pre-activation units, at a set of positions
# ----------------------------------------------------------------------------------------------


def unit_residual_rows(unit: nn.Module, x: torch.Tensor, grid: Grid, active: torch.Tensor | None,
                       dilated: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor | None]:
    """R(x) of a stride-1 pre-activation unit (no projection) at the rows `active`.

    x: [B*H*W, C] the unit's input as rows; active / dilated: ascending rows of A and dilate(A)
    (None: every row). Returns (update, rows): R(x) at `rows` ([len(rows), C]), or at every row
    when rows is None (the last 3x3 conv ran densely; rows outside A hold values that must not
    be used)."""
    assert unit.stride == 1 and unit.shortcut is None
    w = unit_weights(unit)
    everywhere = dilated is None or dilated.numel() == grid.positions
    slope = w["slope"]  # after bn1; w["inner_slope"] after the BNs folded into the convs
    if hasattr(unit, "conv3"):
        # conv1 (1x1, bn2 folded, act) on the dilated rows: its output is what conv2 reads.
        near = x if everywhere else x.index_select(0, dilated)
        pre = activate_(torch.addcmul(w["shift1"], near, w["scale1"]), slope)
        mid = activate_(torch.addmm(w["b1"], pre, w["w1"]), w["inner_slope"])
        # conv2 (3x3, bn3 folded, act), then conv3 (1x1), at the active rows.
        out, rows = conv3x3(grid, mid, None if everywhere else dilated, active, w, "2", activate=True, then=w["w3"])
        return (out if w["b3"] is None else out.add_(w["b3"])), rows
    # Basic unit. conv1 (3x3, bn2 folded) on the dilated rows reads act(bn1(x)) around them:
    # the pre-activation is elementwise, so it is applied to the whole map (no FLOPs counted).
    pre = activate_(torch.addcmul(w["shift1"], x, w["scale1"]), slope)
    mid, have = conv3x3(grid, pre, None, None if everywhere else dilated, w, "1", activate=True)
    return conv3x3(grid, mid, have, active, w, "2", activate=False)


def unit_residual(unit: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """R(x) of a stride-1 unit at every position of a channels-last map [B, C, H, W] (ACT's
    running images), BNs folded: `unit_residual_rows` on the whole map. A channels-last map.
    Off the CPU the module's own forward (cuDNN; `DENSE_3X3_ABOVE` was measured on a CPU)."""
    if x.device.type != "cpu":
        return unit.residual(x)
    batch, _, height, width = x.shape
    positions = grid(batch, height, width, x.device)
    update, _ = unit_residual_rows(unit, as_rows(x), positions, None, None)
    return positions.as_nchw(update)


def unit_output(unit: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """A whole pre-activation unit, shortcut + R(x), of any stride, at every position of a
    channels-last map [B, C, H, W] -> [B, C', H', W'] (channels-last), its inner BNs folded into
    the convs before them: what a block's first unit computes under sparse execution (it always
    runs everywhere). The module's own forward runs each BN as a pass over the map of its own;
    the four first units of a ResNet-50 are a third of its FLOPs, and this takes ~15% less time
    than their forwards (bench/README.md, issue 21 item 4). Inference only (weights cached as in
    `unit_weights`)."""
    w = unit_weights(unit)
    batch, channels, height, width = x.shape
    rows = as_rows(x)
    pre = activate_(torch.addcmul(w["shift1"], rows, w["scale1"]), w["slope"])  # act(bn1(x))
    pre_map = pre.view(batch, height, width, channels).permute(0, 3, 1, 2)
    stride = unit.stride
    if hasattr(unit, "conv3"):  # bottleneck: 1x1, strided 3x3 (padding 1 in both styles), 1x1
        mid = activate_(torch.addmm(w["b1"], pre, w["w1"]), w["inner_slope"])
        mid = conv_dense(mid.view(batch, height, width, -1).permute(0, 3, 1, 2), w["k2"], w["p2"], w["b2"], stride, 1, w["inner_slope"])
        out_height, out_width = mid.shape[-2:]
        branch_rows = as_rows(mid)
        if w["ws"] is not None:  # the projection of pre (1x1, strided: every stride-th position), then + branch @ w3
            taken = as_rows(pre_map[:, :, ::stride, ::stride] if stride > 1 else pre_map)
            out = (taken @ w["ws"] if w["bs"] is None else torch.addmm(w["bs"], taken, w["ws"])).addmm_(branch_rows, w["w3"])
        else:
            out = torch.addmm(as_rows(unit.shortcut_path(x, pre_map)), branch_rows, w["w3"])
        if w["b3"] is not None:
            out = out.add_(w["b3"])
        return out.view(batch, out_height, out_width, -1).permute(0, 3, 1, 2)
    # basic: strided 3x3 (TF 'SAME' padding in their style), 3x3
    mid = conv_dense(unit.conv1_input(pre_map), w["k1"], w["p1"], w["b1"], stride, unit.conv1.padding[0], w["inner_slope"])
    out = conv_dense(mid, w["k2"], w["p2"], w["b2"], 1, 1)
    return out.add_(unit.shortcut_path(x, pre_map))
