"""Mixture-of-Depths (Raposo et al. 2024), as a causal byte language model, and its dense twin.

A stack of `depth` causal transformer layers (models/causal_transformer.py). Every `route_every`-th
layer (the 2nd, 4th, ...) is routed: a router scores each byte, and only the routed bytes go
through the layer; the others pass by on the residual stream:

    r_t     = w_r . x_t                               the router's score
    x_t'    = x_t + sigmoid(r_t) * u_t    if t routed  u: the layer's update, computed among the routed bytes only
    x_t'    = x_t                         otherwise

Which bytes are routed:
- training ("top-k", the paper's rule): the k = capacity x n highest scores of the window. It
  looks at later bytes, so it cannot be used to predict them;
- evaluation and the dashboard ("predictor", causal): a small MLP on the layer's input (the
  paper's auxiliary predictor, trained beside the LM on the stop-gradient input with a binary
  cross-entropy against the top-k choice) routes byte t iff its logit is > 0. It reads byte t's
  own state only, which depends on bytes <= t. The capacity is then a target, not a bound: the
  Trace's token_layers say how many went through.

The dense twin (`capacity=1`) runs every byte through every layer, with no routers.

Trace: token_layers [B, T, depth], the layers each byte went through (the unrouted ones
always); token_layer_weights [B, T, depth], the weight its update got (sigmoid(r) in a routed
layer, 1 in the others, 0 where it did not go through); steps [B, T] = the layers a byte went
through, and ponder the same number (there is no remainder here).
"""
from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from .causal_transformer import BYTES, ByteWindows, CausalLayer, readout_flops, window_sizes
from .registry import register_family, register_model
from .sparse import Execution, requested_execution
from .trace import Trace

register_family("mod", "Mixture-of-Depths", "decides per byte and layer: in every routed layer a router picks the bytes that go "
                "through it, the rest pass by, so the character x layer picture shows which layers each byte went through")

ROUTINGS = ("predictor", "top-k")


class MixtureOfDepthsLM(nn.Module):
    def __init__(self, dim: int = 128, heads: int = 4, mlp_ratio: float = 4.0, depth: int = 6, context: int = 128, capacity: float = 0.125,
                 route_every: int = 2, routing: str = "predictor", execution: Execution | str = Execution.SPARSE,
                 input_kind: str = "bytes", output_size: int = BYTES, output: str = "sequence"):
        super().__init__()
        if (input_kind, output_size, output) != ("bytes", BYTES, "sequence"):
            raise ValueError("a Mixture-of-Depths model here is a byte language model (input_kind 'bytes', output_size 256, output 'sequence')")
        if not 0 < capacity <= 1:
            raise ValueError(f"capacity must be in (0, 1], not {capacity}")
        if routing not in ROUTINGS:
            raise ValueError(f"routing must be one of {ROUTINGS}, not {routing!r}")
        self.depth, self.context, self.capacity, self.routing = depth, context, capacity, routing
        self.execution = Execution.of(execution)
        self.embedding = nn.Embedding(BYTES, dim)
        self.position = nn.Parameter(torch.randn(context, dim) * 0.02)
        self.layers = nn.ModuleList(CausalLayer(dim, heads, mlp_ratio) for _ in range(depth))
        self.routed = [capacity < 1 and index % route_every == route_every - 1 for index in range(depth)]
        self.routers = nn.ModuleDict({str(i): nn.Linear(dim, 1) for i in range(depth) if self.routed[i]})
        self.predictors = nn.ModuleDict({str(i): nn.Sequential(nn.Linear(dim, dim // 4), nn.GELU(), nn.Linear(dim // 4, 1))
                                         for i in range(depth) if self.routed[i]})
        self.norm, self.head = nn.LayerNorm(dim), nn.Linear(dim, BYTES)
        self.token_layer_names = [f"layer {i + 1}" + (" (routed)" if self.routed[i] else "") for i in range(depth)]

    @property
    def has_sparse_path(self) -> bool:
        return any(self.routed)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.trace(x).logits

    def trace(self, x: torch.Tensor) -> Trace:
        windows = ByteWindows(x.long(), self.context)
        parts = [self._window(part) for part in windows.parts]
        logits, ran, weights = (windows.join([p[i] for p in parts]) for i in range(3))
        flops = windows.per_text([p[3] for p in parts])  # float64: a long text's count is past float32's whole numbers
        steps = ran.sum(-1)
        extras = {}
        if self.training and any(self.routed):  # what adaptive_loss trains the predictors on
            extras = {"predictor_logits": torch.cat([p[4].flatten() for p in parts]), "router_targets": torch.cat([p[5].flatten() for p in parts])}
        return Trace(logits=logits, flops=flops, dense_flops=self.dense_flops(x.shape[1]), ponder=steps.to(logits.dtype), steps=steps,
                     token_layers=ran, token_layer_weights=weights if any(self.routed) else None, extras=extras)

    def _window(self, x: torch.Tensor):
        """One batch of windows x [W, n] -> logits, ran [W, n, depth], weights, FLOPs [W], and while
        training the predictors' logits and the top-k choice they learn, [routed layers, W, n]."""
        w, n = x.shape
        state = self.embedding(x) + self.position[:n]
        everyone = torch.ones(w, n, dtype=torch.bool, device=x.device)
        flops = torch.full((w,), float(readout_flops(self.head, n)), dtype=torch.float64, device=x.device)
        sparse = requested_execution(self) is not Execution.MASKED
        ran, weights, predicted, chosen = [], [], [], []
        for index, layer in enumerate(self.layers):
            if not self.routed[index]:
                state = state + layer.masked_update(state)
                ran.append(everyone)
                weights.append(everyone.to(state.dtype))
                flops = flops + layer.flops(everyone)
                continue
            score = self.routers[str(index)](state).squeeze(-1)  # [W, n]
            by_predictor = not self.training and self.routing == "predictor"  # causal: the rule at evaluation
            prediction = self.predictors[str(index)](state.detach()).squeeze(-1) if self.training or by_predictor else None
            top_k = None if by_predictor else self.top_k(score)
            routed = prediction > 0 if by_predictor else top_k
            weight = torch.sigmoid(score)
            if sparse:
                state = layer.sparse_update(state, routed, keys=routed, weight=weight)
            else:  # every byte computed, reading the routed bytes only; the update kept where routed
                state = state + (routed * weight).unsqueeze(-1) * layer.masked_update(state, keys=routed)
            ran.append(routed)
            weights.append(weight * routed)
            flops = flops + layer.flops(routed, keys=routed) + n * self.router_flops(predictor=prediction is not None)
            if self.training:
                predicted.append(prediction)
                chosen.append(top_k.to(prediction.dtype))
        extras = (torch.stack(predicted), torch.stack(chosen)) if predicted else (None, None)
        return (self.head(self.norm(state)), torch.stack(ran, -1), torch.stack(weights, -1), flops, *extras)

    def top_k(self, score: torch.Tensor) -> torch.Tensor:
        """[W, n] bool: each window's k = capacity x n (at least 1) highest scores."""
        k = max(1, round(self.capacity * score.shape[1]))
        chosen = torch.zeros_like(score, dtype=torch.bool)
        return chosen.scatter(1, score.topk(k, dim=1).indices, True)

    # ------------------------------------------------------------------ FLOPs
    def router_flops(self, predictor: bool) -> int:
        """Per byte and routed layer: the router, and the predictor where it runs (it decides at
        evaluation; while training it learns the top-k choice)."""
        d = self.head.in_features
        return 2 * d + (2 * (d * (d // 4) + d // 4) if predictor else 0)

    def dense_flops(self, length: int) -> float:
        """The dense twin's FLOPs on a text of `length` bytes: every byte through every layer."""
        total = 0.0
        for size in window_sizes(length, self.context):
            everyone = torch.ones(1, size, dtype=torch.bool)
            total += float(sum(layer.flops(everyone)[0] for layer in self.layers)) + readout_flops(self.head, size)
        return total

    # ------------------------------------------------------------------ training
    def adaptive_loss(self, trace: Trace, predictor: float = 1.0) -> torch.Tensor:
        """predictor x the binary cross-entropy of the causal predictors against the top-k choice
        (on the stop-gradient layer inputs: it trains the predictors only)."""
        if "predictor_logits" not in trace.extras:
            return trace.logits.new_zeros(())
        return predictor * F.binary_cross_entropy_with_logits(trace.extras["predictor_logits"], trace.extras["router_targets"])


@register_model(family="mod", tasks=("bytes-lm",))
def mod(**kwargs) -> MixtureOfDepthsLM:
    """Mixture-of-Depths: every other layer routes a fraction (its capacity) of the bytes through it (Raposo et al. 2024)"""
    return MixtureOfDepthsLM(**kwargs)


@register_model(family="transformer", tasks=("bytes-lm",))
def transformer_lm(**kwargs) -> MixtureOfDepthsLM:
    """A causal transformer byte LM: every byte through every layer (the Mixture-of-Depths model's dense twin)"""
    kwargs.pop("capacity", None)
    kwargs.pop("routing", None)
    return MixtureOfDepthsLM(capacity=1.0, **kwargs)
