"""Which technique is fastest for a 3x3 convolution evaluated on a subset of positions?

For every 3x3 conv shape of the benchmarked networks and a range of active fractions, times

    dense    the dense kernel on the whole map (what the dense ResNet runs; cost independent of f)
    rows     the dense kernel on the whole map in the NHWC layout sparse execution keeps, then
             the active rows taken out (models/sparse.conv3x3_map: the dense fallback)
    gather   per-position im2col of the active positions + one matrix product
             (models/sparse.conv3x3_rows)
    tiles8   8x8 output tiles that hold an active position, gathered with a 1-pixel halo and run
             through the dense kernel as a batch of tiles (block-sparse; not used by the models)

as a ratio to `dense`, on "blob" masks (smooth random fields thresholded: what SACT ponder maps
look like) and "scattered" masks (independent positions). Interleaved repeats, median, one thread.
The thresholds in models/sparse.DENSE_3X3_ABOVE come from this table (the fraction above which
`rows` beats `gather`).

    .venv/bin/python -m bench.kernels --out bench/kernels.md      (~3 minutes)
"""
from __future__ import annotations

import argparse
import statistics
import time

import torch
import torch.nn.functional as F

from bench.common import setup_cpu
from ponderscope.models import sparse

# (batch, width, map size): the 3x3 convs of ResNet-50 at 224x224, ResNet-32 (24, 48, 96) at 28x28
# and ResNet-20 (16, 32, 64) at 60x60 (the cluttered-MNIST model).
SHAPES = [(1, 64, 56), (1, 128, 28), (1, 256, 14), (1, 512, 7), (1, 24, 28), (1, 48, 14), (1, 96, 7), (1, 16, 60), (1, 32, 30),
          (32, 24, 28), (32, 48, 14), (32, 96, 7)]
FRACTIONS = (0.1, 0.3, 0.5, 0.7, 0.9, 1.0)


def blob_mask(batch, size, fraction, generator):
    """Smooth random field (bilinear upsampling of 4x4 noise) thresholded at its `fraction` quantile."""
    field = F.interpolate(torch.randn(batch, 1, 4, 4, generator=generator), size=size, mode="bilinear", align_corners=False)[:, 0]
    threshold = field.flatten().kthvalue(max(1, int(round(fraction * field.numel())))).values
    return field <= threshold


def scattered_mask(batch, size, fraction, generator):
    return torch.rand(batch, size, size, generator=generator) < fraction


def tiles_conv(padded_nhwc, mask, kernel, tile=8):
    """3x3 conv at the tiles of `mask` that hold an active position, by the dense kernel."""
    batch, height, width = mask.shape
    channels = padded_nhwc.shape[-1]
    tiles_y, tiles_x = -(-height // tile), -(-width // tile)
    # Pad the map so every tile and its halo lies inside it.
    padded = F.pad(padded_nhwc, (0, 0, 0, tiles_x * tile - width, 0, tiles_y * tile - height))
    rows = padded.reshape(-1, channels)
    pw = padded.shape[2]
    occupied = F.max_pool2d(mask.float()[:, None], tile, tile, ceil_mode=True)[:, 0] > 0
    b, ty, tx = occupied.nonzero().unbind(1)
    corner = (b * padded.shape[1] + ty * tile) * pw + tx * tile
    window = (torch.arange(tile + 2)[:, None] * pw + torch.arange(tile + 2)).reshape(-1)
    patches = rows.index_select(0, (corner[:, None] + window).reshape(-1))
    patches = patches.view(-1, tile + 2, tile + 2, channels).permute(0, 3, 1, 2)  # channels-last batch of tiles
    return F.conv2d(patches, kernel)  # [tiles, Cout, tile, tile] (scattering back not timed)


def measure(batch, width, size, fraction, kind, repeats, generator):
    make = blob_mask if kind == "blob" else scattered_mask
    mask = make(batch, size, fraction, generator)
    x = torch.randn(batch, width, size, size, generator=generator)
    kernel = torch.randn(width, width, 3, 3, generator=generator) * 0.05
    grid = sparse.Grid(batch, size, size, x.device)
    matrix = x.permute(0, 2, 3, 1).reshape(-1, width).contiguous()
    weight = sparse.as_matrix(kernel)
    kernel_cl = sparse.dense_kernel(kernel)
    rows = grid.rows(mask)
    padded = grid.scatter_padded(torch.arange(grid.positions), matrix)
    padded_map = padded.view(batch, size + 2, size + 2, width)
    runs = {
        "dense": lambda: F.conv2d(x, kernel, padding=1),
        "rows": lambda: sparse.conv3x3_map(grid, matrix, kernel_cl, None, None).index_select(0, rows),
        "gather": lambda: sparse.conv3x3_rows(grid, padded, rows, weight, None, None),
        "tiles8": lambda: tiles_conv(padded_map, mask, kernel),
    }
    times = {name: [] for name in runs}
    with torch.no_grad():
        for run in runs.values():
            run()
        for _ in range(repeats):
            for name, run in runs.items():
                start = time.perf_counter()
                run()
                times[name].append(time.perf_counter() - start)
    return {name: statistics.median(t) for name, t in times.items()}


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--masks", default="blob,scattered")
    parser.add_argument("--out", default=None, help="also write the table to this file")
    args = parser.parse_args(argv)
    note = setup_cpu()
    generator = torch.Generator().manual_seed(0)
    lines = []

    def emit(line):
        print(line, flush=True)
        lines.append(line)

    emit(f"time / dense-kernel time, median of {args.repeats} interleaved repeats; {note}")
    emit(f"{'batch':>5} {'width':>5} {'map':>4} {'mask':>9} {'dense ms':>8} | " + " | ".join(
        f"f={f:<4} rows gather tiles8" for f in FRACTIONS))
    for batch, width, size in SHAPES:
        for kind in args.masks.split(","):
            cells, dense_ms = [], None
            for fraction in FRACTIONS:
                t = measure(batch, width, size, fraction, kind, args.repeats, generator)
                dense_ms = t["dense"] * 1e3 if dense_ms is None else dense_ms
                cells.append(f"{'':6} {t['rows'] / t['dense']:4.2f} {t['gather'] / t['dense']:6.2f} {t['tiles8'] / t['dense']:6.2f}")
            emit(f"{batch:5d} {width:5d} {size:4d} {kind:>9} {dense_ms:8.2f} | " + " | ".join(cells))
    if args.out:
        with open(args.out, "w", encoding="utf-8") as f:
            f.write("```\n" + "\n".join(lines) + "\n```\n")


if __name__ == "__main__":
    main()
