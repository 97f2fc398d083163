"""bench/avit_patches.py: which patch tokens count as the digit's, the clutter's or empty."""
from __future__ import annotations

import torch

from bench.avit_patches import patch_kinds


def test_patch_kinds_by_box_and_ink():
    canvas = torch.zeros(1, 1, 30, 30, dtype=torch.uint8)  # a 3x3 grid of 10 px patches
    canvas[0, 0, 12:18, 21:24] = 200  # the digit's ink: in patch (1, 2) only
    canvas[0, 0, 25, 3] = 90  # one pixel of clutter in patch (2, 0)
    box = torch.tensor([[12, 19, 18, 24]])  # rows 12..17, columns 19..23: overlaps patches (1, 1) and (1, 2)
    kinds = patch_kinds(canvas, box, 3)
    assert kinds["digit"][0].nonzero().tolist() == [[1, 1], [1, 2]]  # (1, 1) by the box alone, without ink
    assert kinds["clutter"][0].nonzero().tolist() == [[2, 0]]
    assert int(kinds["empty"].sum()) == 9 - 3
    assert bool((kinds["digit"] ^ kinds["clutter"] ^ kinds["empty"]).all())  # each token in exactly one kind
