"""A vision transformer whose tokens halt: A-ViT (Yin et al., CVPR 2022), and its dense twin.

Per image token t and layer l (the token's state e_t^l after the layer):

    h_t^l  = sigmoid(gamma * e_{t,0}^l - beta)     channel 0 of the token's own state: no new weights
    p, N, R from the ACT rule over the layers (models/halting.py), h = 1 at the last layer
    rho_t  = N_t + R_t                              the token's ponder cost (its per-patch map)

A halted token keeps its state, and from the next layer on is neither updated nor attended to
(its attention logits are -inf: softmax over the tokens still running). Loss: task + alpha_p *
mean_t rho_t + alpha_d * KL(H || prior), H the mean halting score per layer normalised over
layers, the prior a Gaussian over depth centred at `target_depth`.

What feeds the head (`readout`):

    "cls"    the class token's last state, the class token going through every layer (the
             authors' network, except that theirs halts too). The task loss then reaches no image
             token's halting score (halting is a discrete mask): tokens halt alike on and off the
             object (docs/experiments: ponder in/out of the digit's box 0.98-1.04).
    "act"    the same class token, which then also reads every image token's ACT-weighted state
             o_t = sum_l p_t^l e_t^l once (one cross-attention): the task reaches each token's
             halting weights, as in ACT and SACT. Tokens with ink, the clutter's included, run
             longer than empty ones, but the class token does most of the work in its own layers
             after the image tokens halt (box 1.3).
    "query"  a learned class query that goes through no layer reads the o_t once: whatever the
             head needs must be carried by the image tokens' own states through the layers they
             run, so the digit's tokens run longest (box 2.1; the bundled model).

Two departures from the authors' network: the readouts above (their class token halts by the
same rule as the image tokens and feeds the head its ACT-weighted state; here nothing halts but
the image tokens, so the per-patch map is all there is to draw); and a small convolutional stem (two strided 3x3 / (p/2)x(p/2)
convolutions) replaces the single patch projection: ViTs trained from scratch on a few tens of
thousands of images learn much faster with one (Xiao et al. 2021).

Execution (models/sparse.py): "masked" runs every token through every layer with the halted
ones masked out of attention and their update dropped (the reference, and training); "sparse"
gathers each image's running tokens (padded to the batch's largest count, the padding masked
out) and runs the layer on those only. The two give the same numbers (tests/test_avit.py).
FLOPs count what the adaptive network needs: per image and layer, the running tokens' QKV,
attention (against the running keys), projection and MLP products, plus stem and head.
"""
from __future__ import annotations

import math
from typing import Optional

import torch
import torch.nn as nn
import torch.nn.functional as F

from .halting import DEFAULT_EPS, StepwiseHalting
from .registry import register_family, register_model
from .sparse import Execution, gather_index, gathered, requested_execution
from .trace import BlockTrace, Trace
from .whatif import HaltingPolicy, current as current_whatif

register_family("avit", "A-ViT (halting tokens)", "decides per token: each image patch's token stops going through layers once "
                "its halting scores add up to the threshold, so the ponder map shows the layers each patch went through")
register_family("vit", "ViT (no halting)", "runs every token through every layer, so there is no ponder map", reference=True)


class Attention(nn.Module):
    def __init__(self, dim: int, heads: int):
        super().__init__()
        self.heads = heads
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor, keys: Optional[torch.Tensor]) -> torch.Tensor:
        """x [B, n, d]; keys [B, n] bool: the tokens that may be attended to (None: all)."""
        b, n, d = x.shape
        q, k, v = self.qkv(x).view(b, n, 3, self.heads, d // self.heads).permute(2, 0, 3, 1, 4)
        mask = None if keys is None else keys[:, None, None, :]  # True: attend (SDPA's boolean convention)
        return self.proj(F.scaled_dot_product_attention(q, k, v, attn_mask=mask).transpose(1, 2).reshape(b, n, d))


class Layer(nn.Module):
    """A pre-norm transformer layer: x + attn(LN x), then + MLP(LN x)."""

    def __init__(self, dim: int, heads: int, mlp_ratio: float):
        super().__init__()
        hidden = int(dim * mlp_ratio)
        self.norm1, self.attn = nn.LayerNorm(dim), Attention(dim, heads)
        self.norm2, self.mlp = nn.LayerNorm(dim), nn.Sequential(nn.Linear(dim, hidden), nn.GELU(), nn.Linear(hidden, dim))

    def forward(self, x: torch.Tensor, keys: Optional[torch.Tensor] = None) -> torch.Tensor:
        x = x + self.attn(self.norm1(x), keys)
        return x + self.mlp(self.norm2(x))

    def flops(self, tokens: torch.Tensor) -> torch.Tensor:
        """FLOPs (2 x multiply-adds) of this layer for `tokens` [B] running tokens that attend to each other."""
        d, hidden = self.attn.proj.in_features, self.mlp[0].out_features
        per_token = 2 * (3 * d * d + d * d + 2 * d * hidden)
        return tokens * per_token + 2 * 2 * tokens * tokens * d  # q.k and attention x v over the running keys


class Readout(nn.Module):
    """The class token reads the image tokens' ACT-weighted states: one cross-attention (query:
    the class token; keys and values: every image token's output, a halted one's included)."""

    def __init__(self, dim: int, heads: int):
        super().__init__()
        self.heads = heads
        self.norm_query, self.norm_tokens = nn.LayerNorm(dim), nn.LayerNorm(dim)
        self.q, self.kv, self.proj = nn.Linear(dim, dim), nn.Linear(dim, 2 * dim), nn.Linear(dim, dim)

    def forward(self, cls: torch.Tensor, outputs: torch.Tensor) -> torch.Tensor:
        """cls [B, d], outputs [B, n, d] -> cls + what it read [B, d]."""
        b, n, d = outputs.shape
        q = self.q(self.norm_query(cls)).view(b, self.heads, 1, d // self.heads)
        k, v = self.kv(self.norm_tokens(outputs)).view(b, n, 2, self.heads, d // self.heads).permute(2, 0, 3, 1, 4)
        return cls + self.proj(F.scaled_dot_product_attention(q, k, v).reshape(b, d))

    def flops(self, tokens: int) -> int:
        d = self.proj.in_features
        return 2 * (d * d + tokens * d * 2 * d + d * d) + 2 * 2 * tokens * d


class ConvStem(nn.Module):
    """image [B, C, H, W] -> tokens [B, (H/p)(W/p), dim]: a 3x3 stride-2 conv, then a (p/2)x(p/2)
    stride-p/2 conv (p = the patch size, even)."""

    def __init__(self, in_channels: int, dim: int, patch: int):
        super().__init__()
        if patch % 2:
            raise ValueError(f"patch must be even (a stride-2 conv, then a (patch/2)-sized one), not {patch}")
        width = max(16, dim // 4)
        self.conv1 = nn.Conv2d(in_channels, width, 3, stride=2, padding=1)
        self.conv2 = nn.Conv2d(width, dim, patch // 2, stride=patch // 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv2(F.gelu(self.conv1(x))).flatten(2).transpose(1, 2)

    def flops(self, height: int, width: int) -> int:
        h1, w1 = math.ceil(height / 2), math.ceil(width / 2)
        c1 = self.conv1
        first = 2 * h1 * w1 * c1.out_channels * c1.in_channels * 9
        k = self.conv2.kernel_size[0]
        second = 2 * (h1 // k) * (w1 // k) * self.conv2.out_channels * self.conv2.in_channels * k * k
        return first + second


class HaltingViT(nn.Module):
    """halting=True: A-ViT; False: the same ViT with every token through every layer (the dense twin)."""

    def __init__(self, num_classes: int = 10, in_channels: int = 1, image_size: int = 60, patch: int = 6, dim: int = 64, depth: int = 6,
                 heads: int = 4, mlp_ratio: float = 2.0, halting: bool = True, gate_scale: float = 10.0, gate_center: float = 5.0,
                 eps: float = DEFAULT_EPS, groups: int = 2, readout: str = "cls", execution: Execution | str = Execution.SPARSE):
        super().__init__()
        if image_size % patch:
            raise ValueError(f"image_size {image_size} is not a multiple of patch {patch}")
        if depth % groups:
            raise ValueError(f"depth {depth} does not split into {groups} layer groups")
        self.grid = image_size // patch
        self.image_size, self.halting, self.eps, self.groups = image_size, halting, eps, groups
        self.gate_scale, self.gate_center = gate_scale, gate_center
        self.execution = Execution.of(execution)
        self.stem = ConvStem(in_channels, dim, patch)
        self.position = nn.Parameter(torch.randn(1, self.grid * self.grid, dim) * 0.02)
        self.cls = nn.Parameter(torch.randn(1, 1, dim) * 0.02)  # the class token (its own position, learned)
        self.layers = nn.ModuleList(Layer(dim, heads, mlp_ratio) for _ in range(depth))
        if readout not in ("cls", "act", "query"):
            raise ValueError(f"readout must be 'cls' (the class token alone), 'act' (it also reads the tokens' ACT-weighted states) or "
                             f"'query' (a class query that goes through no layer reads them once), not {readout!r}")
        self.readout = Readout(dim, heads) if readout in ("act", "query") else None
        # "query": the class token is not one of the layers' tokens, so whatever the head needs must
        # be carried by the image tokens' own states, through the layers they run
        self.class_in_layers = readout != "query"
        self.norm = nn.LayerNorm(dim)
        self.head = nn.Linear(dim, num_classes)

    @property
    def has_sparse_path(self) -> bool:
        return self.halting

    @property
    def layer_names(self) -> list[str]:
        return [f"layer{i + 1}" for i in range(len(self.layers))]

    @property
    def block_names(self) -> list[str]:
        """The trace's blocks, as the page names their maps (the contract's block_names): one per layer group."""
        per = len(self.layers) // self.groups
        return [f"layers {g * per + 1}–{(g + 1) * per}" if per > 1 else f"layer {g + 1}" for g in range(self.groups)]

    @property
    def fixed_input_size(self) -> tuple[int, int]:
        """The one input size it takes (the contract's fixed_input_size): the position embedding fixes the patch grid."""
        return (self.image_size, self.image_size)

    def whatif_knobs(self) -> dict:
        """What models/whatif.py may change: the halting threshold 1 - eps and a cap on the layers
        a token may go through (the dense twin: nothing); "about": what each is, in this model's words."""
        if not self.halting:
            return {}
        return {"threshold": 1.0 - self.eps, "cap": len(self.layers), "about": {
            "threshold": {"label": "halting threshold 1 - eps", "description": "a token stops going through layers once the sum of its "
                          "halting scores reaches this (trained: 1 - eps); lower halts sooner"},
            "cap": {"label": "layers per token, at most", "description": "every token stops at this layer at the latest (it halts there with "
                    "its remainder)"}}}

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.trace(x).logits

    # ------------------------------------------------------------------ the forward pass
    def trace(self, x: torch.Tensor) -> Trace:
        patches = self.stem(x) + self.position  # [B, n, d]
        b, n, _ = patches.shape
        c = int(self.class_in_layers)  # the class token first, when it goes through the layers
        tokens = torch.cat([self.cls.expand(b, -1, -1), patches], 1) if c else patches
        if not self.halting:
            for layer in self.layers:
                tokens = layer(tokens)
            flops = torch.full((b,), float(self.dense_flops(x)), device=x.device)
            return Trace(logits=self.classify(self._class_state(tokens), tokens[:, c:]), flops=flops, dense_flops=self.dense_flops(x))
        sparse = not self.training and requested_execution(self) is not Execution.MASKED
        policy = HaltingPolicy.resolve(current_whatif(), self.eps, self.layer_names)  # a what-if's threshold or cap, else the trained rule
        state = StepwiseHalting((b, n), device=x.device, dtype=tokens.dtype, eps=policy.eps)  # the image tokens'
        always = torch.ones(b, c, dtype=torch.bool, device=x.device)  # the class token (if there) runs every layer
        ran, weights, scores, flops = [], [], [], torch.full((b,), float(self.fixed_flops(x)), device=x.device)
        outputs = torch.zeros_like(patches)  # sum_l p_t^l e_t^l: each image token's ACT-weighted state
        for index, layer in enumerate(self.layers):
            running = state.running
            flops = flops + layer.flops(running.sum(1).to(flops.dtype) + c)
            everyone = torch.cat([always, running], 1)
            tokens = self._run_sparse(layer, tokens, everyone) if sparse else self._run_masked(layer, tokens, everyone)
            last = index == policy.last
            h = torch.ones_like(tokens[:, c:, 0]) if last else torch.sigmoid(self.gate_scale * tokens[:, c:, 0] - self.gate_center)
            h = h * running  # 0 where halted (zero_after_halt below)
            p = state.update(h, force_halt=last, zero_after_halt=True)
            outputs = outputs + p.unsqueeze(-1) * tokens[:, c:]
            ran.append(running)
            scores.append(h)
            weights.append(p)
            if last:  # under a cap, the layers after it run for no image token
                break
        for _ in range(len(self.layers) - len(ran)):
            ran.append(torch.zeros_like(ran[0]))
            weights.append(torch.zeros_like(weights[0]))
            scores.append(torch.zeros_like(scores[0]))
        logits = self.classify(self._class_state(tokens), outputs)
        return Trace(logits=logits, flops=flops, dense_flops=self.dense_flops(x), blocks=self._blocks(ran, weights, scores, b),
                     extras={"layer_halting_scores": torch.stack(scores[:-1], 1)} if self.training else {})  # the prior's input

    def classify(self, cls: torch.Tensor, outputs: torch.Tensor) -> torch.Tensor:
        """The head on the class token's last state (readout "act": after it read the image tokens'
        ACT-weighted states; for the dense twin, their last states), or (readout "query") on what
        the learned query read from them."""
        return self.head(self.norm(cls if self.readout is None else self.readout(cls, outputs)))

    def _class_state(self, tokens: torch.Tensor) -> torch.Tensor:
        """[B, d]: the class token after the layers, or (readout "query") the learned query itself."""
        return tokens[:, 0] if self.class_in_layers else self.cls[:, 0].expand(tokens.shape[0], -1)

    def _run_masked(self, layer: Layer, tokens: torch.Tensor, running: torch.Tensor) -> torch.Tensor:
        """Every token through the layer, the halted ones masked out of attention and left as they were."""
        if bool(running.all()):
            return layer(tokens)
        # an image none of whose tokens runs (readout "query") attends to all of them: its update is
        # dropped anyway, and a row with no key to attend to would be NaN, in the backward pass too
        keys = running | ~running.any(1, keepdim=True)
        return torch.where(running.unsqueeze(-1), layer(tokens, keys), tokens)

    def _run_sparse(self, layer: Layer, tokens: torch.Tensor, running: torch.Tensor) -> torch.Tensor:
        """Only each image's running tokens: gathered to [B, most running, d] (shorter rows padded and
        the padding masked out of attention), run, and written back."""
        if tokens.shape[0] == 1:  # one image (the page's request): its running tokens, no padding, no mask
            rows = running[0].nonzero().squeeze(1)
            if rows.numel() == tokens.shape[1]:
                return layer(tokens)
            out = tokens.clone()
            if rows.numel():
                out[:, rows] = layer(tokens[:, rows])
            return out
        if bool(running.all()):
            return layer(tokens)
        order, valid = gather_index(running)  # running first, in place order
        if order.shape[1] == 0:
            return tokens
        updated = layer(gathered(tokens, order), valid if not bool(valid.all()) else None)
        out = tokens.clone()
        rows = order[valid]
        batch = torch.arange(tokens.shape[0], device=tokens.device).unsqueeze(1).expand_as(order)[valid]
        out[batch, rows] = updated[valid]
        return out

    def _blocks(self, ran: list, weights: list, scores: list, b: int) -> list[BlockTrace]:
        """The per-patch maps, one BlockTrace per layer group: the layers of the group a token went
        through (units) and their ponder share (units, + R in the group where it halted); summed
        over the groups, N + R."""
        per = len(self.layers) // self.groups
        ran, weight, score = torch.stack(ran, 1), torch.stack(weights, 1), torch.stack(scores, 1)  # [B, L, n]
        halted_here = ran & ~torch.cat([ran[:, 1:], torch.zeros_like(ran[:, :1])], 1)  # the last layer a token ran
        blocks = []
        for g in range(self.groups):
            part = slice(g * per, (g + 1) * per)
            units = ran[:, part].sum(1).to(weight.dtype)
            remainder = (weight[:, part] * halted_here[:, part]).sum(1)
            grid = (b, self.grid, self.grid)
            blocks.append(BlockTrace(ponder_cost=(units + remainder).view(grid), units=units.view(grid),
                                     halting=weight[:, part].reshape(b, per, self.grid, self.grid),
                                     probabilities=score[:, part].reshape(b, per, self.grid, self.grid)))
        return blocks

    # ------------------------------------------------------------------ FLOPs
    def fixed_flops(self, x: torch.Tensor) -> int:
        """Stem, readout and head: every image pays them."""
        readout = 0 if self.readout is None else self.readout.flops(self.grid * self.grid)
        return self.stem.flops(x.shape[-2], x.shape[-1]) + readout + 2 * self.head.in_features * self.head.out_features

    def dense_flops(self, x: torch.Tensor) -> float:
        n = torch.tensor([float(self.grid * self.grid + int(self.class_in_layers))])  # the image tokens (and the class token)
        return float(self.fixed_flops(x) + sum(layer.flops(n) for layer in self.layers))

    # ------------------------------------------------------------------ training
    def adaptive_loss(self, trace: Trace, tau: float = 0.005, prior: float = 0.01, target_depth: Optional[float] = None) -> torch.Tensor:
        """tau x mean over tokens of rho = N + R (A-ViT's alpha_p; named tau as ACT's, so that the
        trainer's tau_warmup_steps ramps it), + prior x KL(H || Gaussian prior over depth)."""
        if not trace.blocks:
            return trace.logits.new_zeros(())
        rho = sum(block.ponder_cost for block in trace.blocks)  # [B, h, w]
        loss = tau * rho.mean()
        if prior:
            halting = trace.extras["layer_halting_scores"].mean(dim=(0, 2))  # [L - 1] mean h per layer (the last is 1 by rule)
            centre = target_depth if target_depth is not None else len(self.layers) / 2
            layers = torch.arange(1, len(halting) + 1, device=rho.device, dtype=rho.dtype)
            target = torch.exp(-0.5 * (layers - centre) ** 2)
            target = target / target.sum()
            halting = halting / halting.sum().clamp_min(1e-8)
            loss = loss + prior * (halting * (halting.clamp_min(1e-8).log() - target.log())).sum()
        return loss


@register_model(family="avit")
def avit(**kwargs) -> HaltingViT:
    """A-ViT: a vision transformer whose image tokens halt (Yin et al. 2022)"""
    return HaltingViT(halting=True, **kwargs)


@register_model(family="vit")
def vit(**kwargs) -> HaltingViT:
    """ViT: the same transformer with every token through every layer (A-ViT's dense twin)"""
    kwargs.pop("halting", None)
    return HaltingViT(halting=False, **kwargs)
