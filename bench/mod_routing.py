"""How well a Mixture-of-Depths model's causal predictor stands in for the top-k rule it was trained
with: `python -m bench.mod_routing [CHECKPOINT]` (default checkpoints/jargon_mod).

On the held-out text (ponderscope.core.workloads.BytesLM, the windows `ponderscope eval` reads),
with the model routing by its predictor (the causal rule the card's bits per byte use), each
routed layer's router scores and predictor logits are read on the same inputs (forward hooks):

  * predictor share: the bytes the predictor sends through the layer (logit > 0);
  * top-k share: what the router's top-k would send (the capacity, by construction);
  * agreement: the bytes on which both say the same (the paper reports ~97-99%);

and the held-out bits per byte routed by the predictor (causal) and by top-k (reads later bytes:
for reference only, not a language model's score).
"""
from __future__ import annotations

import argparse
import math
import sys

import torch
import torch.nn.functional as F

from ponderscope.models import load_checkpoint
from ponderscope.core.workloads import BytesLM
from ponderscope.paths import bundled_checkpoints


def measure(checkpoint: str, limit: int | None = None, batch_size: int = 64) -> dict:
    model = load_checkpoint(checkpoint, device="cpu").eval()
    workload = BytesLM(model.card.dataset, torch.device("cpu"), seq_len=model.context)
    inputs, targets = workload.eval_pairs(limit)
    n = len(inputs)
    seen: dict[str, dict[str, list]] = {}

    def keep(name: str, kind: str):
        def hook(_module, _inputs, output):
            seen.setdefault(name, {}).setdefault(kind, []).append(output.squeeze(-1).detach())
        return hook

    handles = [model.routers[name].register_forward_hook(keep(name, "score")) for name in model.routers]
    handles += [model.predictors[name].register_forward_hook(keep(name, "prediction")) for name in model.predictors]
    bits = {}
    try:
        for routing in ("predictor", "top-k"):
            model.routing = routing
            losses = []
            with torch.no_grad():
                for start in range(0, n, batch_size):
                    trace = model.trace(inputs[start : start + batch_size])
                    losses.append(F.cross_entropy(trace.logits.reshape(-1, 256), targets[start : start + batch_size].reshape(-1), reduction="none"))
            bits[routing] = float(torch.cat(losses).mean()) / math.log(2)
            if routing == "predictor":
                layers = {name: {kind: torch.cat(values) for kind, values in kinds.items()} for name, kinds in seen.items()}
    finally:
        model.routing = "predictor"
        for handle in handles:
            handle.remove()
    rows = []
    for name, values in sorted(layers.items(), key=lambda item: int(item[0])):
        score, prediction = values["score"], values["prediction"]
        top_k = model.top_k(score)
        routed = prediction > 0
        rows.append({"layer": model.token_layer_names[int(name)], "predictor_share": float(routed.float().mean()),
                     "top_k_share": float(top_k.float().mean()), "agreement": float((routed == top_k).float().mean())})
    return {"checkpoint": checkpoint, "bytes": n * model.context, "capacity": model.capacity, "layers": rows,
            "bits_per_byte_predictor": bits["predictor"], "bits_per_byte_top_k": bits["top-k"]}


def markdown(result: dict) -> str:
    lines = [f"Held-out bytes: {result['bytes']}; capacity {result['capacity']}. Bits per byte routed by the predictor "
             f"(causal) {result['bits_per_byte_predictor']:.4f}; by top-k (reads later bytes) {result['bits_per_byte_top_k']:.4f}.", "",
             "| routed layer | predictor share | top-k share | agreement |", "| --- | --- | --- | --- |"]
    lines += [f"| {r['layer']} | {100 * r['predictor_share']:.1f}% | {100 * r['top_k_share']:.1f}% | {100 * r['agreement']:.1f}% |" for r in result["layers"]]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.mod_routing", description=__doc__.split("\n\n")[0])
    parser.add_argument("checkpoint", nargs="?", default=str(bundled_checkpoints() / "jargon_mod"))
    parser.add_argument("--limit", type=int, default=None, help="held-out bytes to read (default: all)")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    print(markdown(measure(args.checkpoint, args.limit)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
