"""Where an A-ViT's patch tokens spend their layers on cluttered MNIST:
`python -m bench.avit_patches [CHECKPOINT ...]` (default checkpoints/cluttered_avit).

On the card's test canvases (the 2,000 the card's metrics read, normalised as the card says),
every patch token is put in one of three kinds by the canvas it was cut from:

  * digit: its patch overlaps the digit's box (the box the card's ponder ratio uses);
  * clutter: no overlap with the box, but some ink (a clutter piece: clutter never enters the box);
  * empty: neither.

and per kind the share of tokens, the mean layers run (N) and the mean ponder N + R (summed over
the trace's layer groups, the per-patch map the Image view draws). The card's box ratio compares
pixels inside and outside the box; this says which tokens made it.
"""
from __future__ import annotations

import argparse
import sys

import torch

from ponderscope.core.workloads import checkpoint_test_data
from ponderscope.models import load_checkpoint
from ponderscope.paths import bundled_checkpoints


def patch_kinds(canvases: torch.Tensor, boxes: torch.Tensor, grid: int) -> dict[str, torch.Tensor]:
    """canvases [B, 1, H, W] (raw, 0 = no ink), boxes [B, 4] (top, left, bottom, right, half-open)
    -> {kind: bool [B, grid, grid]} for the kinds above."""
    b, _, height, width = canvases.shape
    ph, pw = height // grid, width // grid
    ink = (canvases[:, 0].reshape(b, grid, ph, grid, pw) > 0).any(4).any(2)
    top = torch.arange(grid)[None, :, None] * ph
    left = torch.arange(grid)[None, None, :] * pw
    box = boxes[:, :, None, None]
    digit = (top < box[:, 2]) & (top + ph > box[:, 0]) & (left < box[:, 3]) & (left + pw > box[:, 1])
    return {"digit": digit, "clutter": ink & ~digit, "empty": ~ink & ~digit}


def measure(checkpoint: str, batch_size: int = 250) -> dict:
    model = load_checkpoint(checkpoint, device="cpu").eval()
    workload = checkpoint_test_data(model.card)
    if workload.test_boxes is None:
        raise SystemExit(f"{checkpoint}: its test set ({model.card.dataset}) has no object boxes")
    raw = workload.test_x  # uint8 [N, 1, H, W]
    units, ponder, correct = [], [], 0
    with torch.no_grad():
        for start in range(0, len(raw), batch_size):
            trace = model.trace(workload.normalize(raw[start : start + batch_size]))
            units.append(sum(block.units for block in trace.blocks))
            ponder.append(sum(block.ponder_cost for block in trace.blocks))
            correct += int((trace.logits.argmax(1) == workload.test_y[start : start + batch_size]).sum())
    units, ponder = torch.cat(units), torch.cat(ponder)
    kinds = patch_kinds(raw, workload.test_boxes, units.shape[-1])
    rows = [{"kind": kind, "share": float(mask.float().mean()), "layers": float(units[mask].mean()), "ponder": float(ponder[mask].mean())}
            for kind, mask in kinds.items()]
    return {"checkpoint": checkpoint, "canvases": len(raw), "accuracy": correct / len(raw), "layers": len(model.layers),
            "grid": units.shape[-1], "rows": rows}


def markdown(results: list[dict]) -> str:
    lines = ["| checkpoint | patch tokens | share | layers run N | ponder N + R |", "| --- | --- | --- | --- | --- |"]
    for result in results:
        for row in result["rows"]:
            lines.append(f"| {result['checkpoint']} | {row['kind']} | {100 * row['share']:.1f}% | {row['layers']:.2f} of {result['layers']} "
                         f"| {row['ponder']:.3f} |")
    notes = [f"{r['checkpoint']}: {r['canvases']} test canvases, {r['grid']}x{r['grid']} patches, accuracy {100 * r['accuracy']:.2f}%" for r in results]
    return "\n".join(lines + [""] + notes)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.avit_patches", description=__doc__.split("\n\n")[0])
    parser.add_argument("checkpoints", nargs="*", default=[str(bundled_checkpoints() / "cluttered_avit")])
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    print(markdown([measure(path) for path in args.checkpoints]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
