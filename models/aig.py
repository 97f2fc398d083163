"""ConvNet-AIG: convolutional networks with adaptive inference graphs (Veit & Belongie, ECCV 2018).

Before every residual block a small gate looks at the block's input and decides, per image,
whether to run the block:

    gate logits = fc2(relu(fc1bn(fc1(GAP(x)))))      2 logits: (skip, run); hidden width 16
    train:  g = Gumbel-softmax straight-through hard sample at temperature 1 (forward: one-hot,
            backward: gradient of the soft sample)
    test:   g = 1 iff logit_run > logit_skip           (deterministic; sampling is an option)
    y = relu(shortcut(x) + g * F(x))                   post-activation block, as in the paper

A closed downsampling block still computes its projection shortcut. The target-rate loss pulls
each layer's batch-mean execution rate towards its target t:  lambda * mean_l (t_l - mean g_l)^2.
With `execution` Execution.SPARSE ("sparse", the default at inference) a block's residual branch
runs only on the images whose gate is open (a sub-batch) and is added back; MASKED ("masked")
computes it for every image and multiplies by g (the reference; training always runs masked).
Same numbers either way. On CUDA the sub-batch is regrouped without a device sync per block
(models/regroup.py: the open images sorted first, a prefix of a remembered capacity, one sync per
pass). A what-if (models/whatif.py: a gate bias theta, removed blocks) reaches
the gates resolved once per forward into a `GatePolicy` (`gate_value`).
Parameter names follow the authors' code (conv1, bn1, layerS.B.{conv,bn}{1,2,3}, shortcut.{0,1},
fc1, fc1bn, fc2, linear) so their state dicts load after `convert_official_state_dict`.
"""
from __future__ import annotations

import re

import torch
import torch.nn as nn
import torch.nn.functional as F

from . import regroup
from . import sparse as sparse_ops
from .batch_stats import batch_mean
from .flops import conv_flops, linear_flops
from .registry import register_model
from .resnet import CIFAR_DEPTHS, IMAGENET_LAYOUTS, IMAGENET_WIDTHS, cifar_units, layout_depth
from .sparse import Execution
from .trace import Trace
from .whatif import GatePolicy
from .whatif import current as current_whatif

GATE_HIDDEN = 16


class Gate(nn.Module):
    def __init__(self, channels: int):
        super().__init__()
        self.fc1 = nn.Conv2d(channels, GATE_HIDDEN, 1)
        self.fc1bn = nn.BatchNorm2d(GATE_HIDDEN)
        self.fc2 = nn.Conv2d(GATE_HIDDEN, 2, 1)
        # Start about 87% open (softmax of [0.1, 2]) with near-zero weights, as the authors do.
        nn.init.normal_(self.fc2.weight, 0.0, 0.001)
        with torch.no_grad():
            self.fc2.bias.copy_(torch.tensor([0.1, 2.0]))

    def logits(self, x: torch.Tensor) -> torch.Tensor:
        pooled = F.adaptive_avg_pool2d(x, 1)
        return self.fc2(F.relu(self.fc1bn(self.fc1(pooled)))).flatten(1)  # [B, 2]

    def flops(self) -> int:
        return conv_flops(self.fc1, 1) + conv_flops(self.fc2, 1)


def gumbel_straight_through(logits: torch.Tensor, temperature: float = 1.0) -> torch.Tensor:
    """Hard sample of P(run) with the soft sample's gradient -> [B] in {0, 1}."""
    uniform = torch.rand_like(logits).clamp_(1e-10, 1.0 - 1e-10)
    soft = F.softmax((logits - torch.log(-torch.log(uniform))) / temperature, dim=-1)
    hard = F.one_hot(soft.argmax(-1), 2).to(soft.dtype)
    return (hard - soft.detach() + soft)[:, 1]


def gate_value(logits: torch.Tensor, policy: GatePolicy, index: int, sample: bool, dtype: torch.dtype) -> torch.Tensor:
    """g [B] of gated block `index` from its gate's logits [B, (skip, run)] under `policy`:
    forced closed if removed (the block is then its shortcut); sampled (training, or
    gate_mode "sample") from the logits with the run logit shifted by -theta; else run iff
    logit_run - logit_skip > theta (theta = 0: the trained rule, the argmax)."""
    theta = policy.theta
    if index in policy.removed:
        return torch.zeros_like(logits[:, 0])
    if sample:
        return gumbel_straight_through(logits if theta == 0.0 else logits - logits.new_tensor([0.0, theta]))
    if theta == 0.0:
        return (logits[:, 1] > logits[:, 0]).to(dtype)
    return (logits[:, 1] - logits[:, 0] > theta).to(dtype)


class GatedBlock(nn.Module):
    """Post-activation basic (2 x 3x3) or bottleneck (1x1, 3x3, 1x1) block with a gate."""

    def __init__(self, in_planes: int, planes: int, stride: int, bottleneck: bool):
        super().__init__()
        expansion = 4 if bottleneck else 1
        out_planes = planes * expansion
        if bottleneck:
            self.conv1 = nn.Conv2d(in_planes, planes, 1, bias=False)
            self.bn1 = nn.BatchNorm2d(planes)
            self.conv2 = nn.Conv2d(planes, planes, 3, stride, 1, bias=False)
            self.bn2 = nn.BatchNorm2d(planes)
            self.conv3 = nn.Conv2d(planes, out_planes, 1, bias=False)
            self.bn3 = nn.BatchNorm2d(out_planes)
            self.layers = [(self.conv1, self.bn1), (self.conv2, self.bn2), (self.conv3, self.bn3)]
        else:
            self.conv1 = nn.Conv2d(in_planes, planes, 3, stride, 1, bias=False)
            self.bn1 = nn.BatchNorm2d(planes)
            self.conv2 = nn.Conv2d(planes, planes, 3, 1, 1, bias=False)
            self.bn2 = nn.BatchNorm2d(planes)
            self.layers = [(self.conv1, self.bn1), (self.conv2, self.bn2)]
        self.shortcut = nn.Sequential()
        if stride != 1 or in_planes != out_planes:
            self.shortcut = nn.Sequential(nn.Conv2d(in_planes, out_planes, 1, stride, bias=False), nn.BatchNorm2d(out_planes))
        self.gate = Gate(in_planes)
        self.out_planes = out_planes
        self.stride = stride

    def residual(self, x: torch.Tensor, inplace: bool = False) -> torch.Tensor:
        """F(x); inplace: the ReLUs overwrite their input (no new buffer: at batch 32 every large
        buffer is a fresh mmap whose pages fault in)."""
        out = x
        for index, (conv, bn) in enumerate(self.layers):
            out = bn(conv(out))
            if index < len(self.layers) - 1:
                out = F.relu(out, inplace=inplace)
        return out

    def residual_flops(self, out_positions: int) -> float:
        # Convolutions before the strided one run at the input resolution (a bottleneck's conv1).
        scale, flops = self.stride**2, 0.0
        for conv, _ in self.layers:
            if conv.stride != (1, 1):
                scale = 1
            flops += conv_flops(conv, out_positions * scale)
        return flops

    def shortcut_flops(self, out_positions: int) -> float:
        return conv_flops(self.shortcut[0], out_positions) if len(self.shortcut) else 0.0


class AIGResNet(nn.Module):
    def __init__(
        self,
        blocks_per_stage: list[int],
        widths: list[int],
        bottleneck: bool = False,
        num_classes: int = 10,
        in_channels: int = 3,
        stem: str = "cifar",
        gate_mode: str = "deterministic",
        execution: Execution | str = Execution.SPARSE,
    ):
        super().__init__()
        self.stem_kind = stem
        self.gate_mode = gate_mode  # "deterministic" or "sample" at inference
        self.execution = Execution.of(execution)  # SPARSE or MASKED at inference ("sparse" / "masked" too)
        if stem == "cifar":
            self.conv1 = nn.Conv2d(in_channels, widths[0], 3, 1, 1, bias=False)
            self.bn1 = nn.BatchNorm2d(widths[0])
            planes = widths[0]
        else:
            self.conv1 = nn.Conv2d(in_channels, 64, 7, 2, 3, bias=False)
            self.bn1 = nn.BatchNorm2d(64)
            planes = 64
        for stage, (n_blocks, width) in enumerate(zip(blocks_per_stage, widths), start=1):
            blocks = []
            for index in range(n_blocks):
                stride = 2 if index == 0 and stage > 1 else 1
                blocks.append(GatedBlock(planes, width, stride, bottleneck))
                planes = blocks[-1].out_planes
            setattr(self, f"layer{stage}", nn.Sequential(*blocks))
        self.n_stages = len(blocks_per_stage)
        self.linear = nn.Linear(planes, num_classes)
        # The authors' ImageNet ResNets draw every conv, the gate's fc1 included, from
        # N(0, 2 / (k*k*out_channels)) (kaiming, fan-out) and fc2 from N(0, 0.001) (Gate does
        # that); their CIFAR ResNets keep PyTorch's default for all but fc2. Both widths use the
        # ImageNet rule here.
        for module in self.modules():
            if isinstance(module, nn.Conv2d) and module.out_channels > 2:
                nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")

    @property
    def gated_blocks(self) -> list[GatedBlock]:
        return [block for stage in range(1, self.n_stages + 1) for block in getattr(self, f"layer{stage}")]

    @property
    def gate_names(self) -> list[str]:
        """One name per gated layer, in Trace.gates order (the optional contract attribute the
        gate chart and the class x layer view label their layers with: docs/own-models.md)."""
        return [f"layer{stage}.{b}" for stage in range(1, self.n_stages + 1) for b in range(len(getattr(self, f"layer{stage}")))]

    def trace(self, x: torch.Tensor) -> Trace:
        execution = sparse_ops.execution_of(self)
        if execution is Execution.SPARSE:  # channels-last maps: sub-batches of images stay contiguous (see sparse.select_images)
            x = x.contiguous(memory_format=torch.channels_last)
        out = self.conv1(x)
        dense = float(conv_flops(self.conv1, out.shape[-2] * out.shape[-1]))
        out = F.relu(self.bn1(out))
        if self.stem_kind == "imagenet":
            out = F.max_pool2d(out, 3, 2, 1)
        flops = torch.full((x.shape[0],), dense, device=x.device)
        gates, executed, gate_values = [], [], []
        sample = self.training or self.gate_mode == "sample"
        policy = GatePolicy.resolve(current_whatif(), self.gate_names)  # models/whatif.py: theta, removed blocks
        # on CUDA: the open images regrouped without a device sync per block (models/regroup.py)
        regrouped = regroup.start(self, x, sample) if execution is Execution.SPARSE else None
        for index, block in enumerate(self.gated_blocks):
            logits = block.gate.logits(out)
            g = gate_value(logits, policy, index, sample, out.dtype)
            shortcut = block.shortcut(out)
            positions = shortcut.shape[-2] * shortcut.shape[-1]
            if regrouped is not None:
                out = regrouped.block(index, block, out, shortcut, g)
            elif execution is Execution.SPARSE:
                out = self._open_images_only(block, out, shortcut, g)
            else:
                out = F.relu(shortcut + g[:, None, None, None] * block.residual(out))
            residual_flops = block.residual_flops(positions)
            flops = flops + block.gate.flops() + block.shortcut_flops(positions) + (g.detach() > 0.5) * residual_flops
            dense += residual_flops + block.shortcut_flops(positions)
            gates.append(F.softmax(logits, -1)[:, 1])
            executed.append(g.detach() > 0.5)
            gate_values.append(g)
        if regrouped is not None and not regrouped.finish():  # more gates open than a block's capacity: again, synchronising
            with regroup.regrouping(False):
                trace = self.trace(x)
            regrouped.remember(trace.executed.sum(0).tolist())
            return trace
        pooled = F.adaptive_avg_pool2d(out, 1).flatten(1)
        logits = self.linear(pooled)
        flops = flops + linear_flops(self.linear)
        dense += linear_flops(self.linear)
        return Trace(
            logits=logits,
            flops=flops,
            dense_flops=dense,
            gates=torch.stack(gates, 1),
            executed=torch.stack(executed, 1),
            gate_values=torch.stack(gate_values, 1),
        )

    @staticmethod
    def _open_images_only(block: GatedBlock, x: torch.Tensor, shortcut: torch.Tensor, g: torch.Tensor) -> torch.Tensor:
        """relu(shortcut + g * F(x)) with F computed only for the images whose gate is open.

        A closed identity block passes x through untouched: relu(x) = x, since x came out of a
        relu (the stem's or the previous block's). Buffers made here are updated in place (and so
        is x, which nothing reads after this block) unless autograd is recording. (With autograd
        on, g still multiplies F where it ran, so the straight-through gradient reaches open gates;
        closed gates get none, as F was not computed for them.)"""
        inplace = not torch.is_grad_enabled()
        open_ = g.detach() > 0.5
        identity = shortcut is x
        if bool(open_.all()):
            update = block.residual(x, inplace)
            if g.requires_grad:
                update = update * g[:, None, None, None]
            return update.add_(shortcut).relu_() if inplace else F.relu(update + shortcut)
        if not bool(open_.any()):
            return x if identity else F.relu(shortcut, inplace=inplace)
        images = open_.nonzero().squeeze(1)
        x_open = sparse_ops.select_images(x, images)
        update = block.residual(x_open, inplace)
        if g.requires_grad:
            update = update * g[images, None, None, None]
        shortcut_open = x_open if identity else sparse_ops.select_images(shortcut, images)
        opened = update.add_(shortcut_open).relu_() if inplace else F.relu(update + shortcut_open)
        base = x if identity else F.relu(shortcut, inplace=inplace)  # the projection is ours
        return sparse_ops.put_images(base, images, opened, inplace=inplace)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.trace(x).logits

    def adaptive_loss(self, trace: Trace, target_rate=0.6, lam: float = 2.0) -> torch.Tensor:
        """lambda x mean over gated layers of (t_l - batch-mean gate_l)^2; t may be per layer."""
        rates = batch_mean(trace.gate_values)  # the global batch's rate under DDP (the loss squares it)
        target = torch.as_tensor(target_rate, dtype=rates.dtype, device=rates.device)
        return lam * ((target - rates) ** 2).mean()


_OFFICIAL_GATE_KEY = re.compile(r"^(layer\d+\.\d+\.)(fc1|fc1bn|fc2)\.")
_OUR_GATE_KEY = re.compile(r"^(layer\d+\.\d+\.)gate\.")


def official_to_ours(key: str) -> str:
    """One name of the authors' state dict -> ours: drop DataParallel's 'module.' prefix and move
    the gate layers, which sit on the block there (layerS.B.fc1), into our `gate` submodule
    (layerS.B.gate.fc1). Every other name is the same in both."""
    key = key[len("module."):] if key.startswith("module.") else key
    return _OFFICIAL_GATE_KEY.sub(r"\1gate.\2.", key)


def ours_to_official(key: str) -> str:
    """The inverse of `official_to_ours` (without the 'module.' prefix): for naming, in the
    authors' terms, a variable that their checkpoint lacks."""
    return _OUR_GATE_KEY.sub(r"\1", key)


def convert_official_state_dict(state_dict: dict) -> dict:
    """Map a checkpoint of the authors' code to ours (names by `official_to_ours`), and fill in
    the BatchNorm counters that PyTorch 0.3 did not save."""
    converted = {official_to_ours(key): value for key, value in state_dict.items()}
    for key in list(converted):
        if key.endswith(".running_mean"):
            counter = key[: -len("running_mean")] + "num_batches_tracked"
            converted.setdefault(counter, torch.tensor(0, dtype=torch.long))
    return converted


@register_model(family="aig")
def aig_resnet(depth: int | None = None, widths=(16, 32, 64), blocks_per_stage=None, bottleneck: bool = False,
               stem: str = "cifar", **kwargs) -> AIGResNet:
    """ConvNet-AIG of any layout.

    By depth alone: CIFAR-style, 6n+2 layers (basic blocks, n per stage, 3 stages; 20 if no depth).
    By `blocks_per_stage` (one width per stage, basic or bottleneck blocks, stem "cifar" or
    "imagenet"): any layout, e.g. a checkpoint of the authors' code that no registered name fits;
    a depth given with it must agree."""
    if blocks_per_stage is None:
        depth = 20 if depth is None else depth
        if bottleneck or stem != "cifar":
            raise ValueError("a depth alone describes a CIFAR-style basic-block network; give blocks_per_stage for other layouts")
        n = cifar_units(depth)
        return AIGResNet([n, n, n], list(widths), bottleneck=False, stem="cifar", **kwargs)
    blocks_per_stage = [int(n) for n in blocks_per_stage]
    if not blocks_per_stage or min(blocks_per_stage) < 1 or len(widths) != len(blocks_per_stage):
        raise ValueError(f"blocks_per_stage {blocks_per_stage} needs at least one block per stage and one width per stage (widths {list(widths)})")
    depth_of_layout = layout_depth(blocks_per_stage, bottleneck)
    if depth is not None and depth != depth_of_layout:
        raise ValueError(f"blocks_per_stage {blocks_per_stage} makes a ResNet-{depth_of_layout}, not depth {depth}")
    return AIGResNet(blocks_per_stage, list(widths), bottleneck=bottleneck, stem=stem, **kwargs)


def _register(depth: int, builder):
    def make(**kwargs):
        return builder(depth, **kwargs)

    make.__name__ = f"aig_resnet{depth}"
    make.__doc__ = f"ConvNet-AIG ResNet-{depth}"
    register_model(make, family="aig")


# The ImageNet networks of the paper (bottleneck blocks, 7x7 stem + max-pool), as in the authors' code.
def _imagenet_aig(depth: int, **kwargs) -> AIGResNet:
    kwargs.setdefault("num_classes", 1000)
    return AIGResNet(IMAGENET_LAYOUTS[depth], list(IMAGENET_WIDTHS), bottleneck=True, stem="imagenet", **kwargs)


for _depth in CIFAR_DEPTHS:
    _register(_depth, aig_resnet)
for _depth in IMAGENET_LAYOUTS:
    _register(_depth, _imagenet_aig)
