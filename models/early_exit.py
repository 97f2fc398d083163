"""A ResNet that exits early: a classifier after each stage (BranchyNet, Teerapittayanon et al.
2016; MSDNet's exit rule, Huang et al. 2018), and an image leaves at the first exit confident
enough.

    stage s runs on the images still inside; exit s reads its output:
    p_s    = softmax(exit_s(x_s))                   exit head: 2 x (conv 3x3 stride 2, BN, ReLU), pool, linear
    c_s    = max_k p_s[k]                           the exit's confidence
    leave at s* = min{ s : c_s >= threshold }       (the last exit takes whoever is left)
    logits = exit_{s*}'s;  FLOPs = stem + stages 1..s* + exit heads 1..s*
    loss   = sum_s CE(exit_s, y)                    (training: every exit on every image)

The backbone is the dense pre-activation ResNet (models/resnet.py) and the last exit is its own
head, so a dense ResNet's weights load into it unchanged (`init_from` in a training config) and
`freeze_backbone=True` trains the side exits alone on that backbone, which is how the bundled
model was made (its card says so).

Execution (models/sparse.py): "sparse" runs each stage on the sub-batch still inside (an image
that left costs nothing more); "masked" runs every stage and exit on every image and picks each
image's exit afterwards (the reference, and training). The same numbers either way.
"""
from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from .registry import register_family, register_model
from .resnet import ResNet, cifar_units, conv_flops, linear_flops
from .sparse import Execution, requested_execution
from .trace import Trace
from .whatif import current as current_whatif

register_family("early-exit", "early-exit ResNet", "decides per image: an image leaves at the first exit whose confidence "
                "(its top class probability) reaches the threshold, and the stages after it do not run")


class ExitHead(nn.Module):
    """A side classifier (MSDNet's have two convolutions too): twice conv 3x3 stride 2 doubling the
    width, BN, ReLU; then global mean and linear."""

    def __init__(self, channels: int, num_classes: int):
        super().__init__()
        self.conv1 = nn.Conv2d(channels, 2 * channels, 3, stride=2, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(2 * channels)
        self.conv2 = nn.Conv2d(2 * channels, 4 * channels, 3, stride=2, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(4 * channels)
        self.classifier = nn.Linear(4 * channels, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.relu(self.bn1(self.conv1(x)))
        return self.classifier(F.relu(self.bn2(self.conv2(x))).mean(dim=(2, 3)))

    def flops(self, height: int, width: int) -> float:
        h1, w1 = (height + 1) // 2, (width + 1) // 2
        h2, w2 = (h1 + 1) // 2, (w1 + 1) // 2
        return float(conv_flops(self.conv1, h1 * w1) + conv_flops(self.conv2, h2 * w2) + linear_flops(self.classifier))


def confidence_of(logits: torch.Tensor) -> torch.Tensor:
    """An exit's confidence: its top class probability."""
    return logits.softmax(-1).amax(-1)


def exits_taken(confidence: torch.Tensor, threshold: float) -> torch.Tensor:
    """[B, E] every exit's confidence -> [B] the first exit at or above the threshold (the last
    exit takes whoever is left): the rule, for the masked path and for choosing a threshold."""
    confident = confidence >= threshold
    confident[:, -1] = True
    return confident.int().argmax(1)  # the first True


class EarlyExitResNet(ResNet):
    def __init__(self, depth: int = 32, widths=(24, 48, 96), num_classes: int = 10, in_channels: int = 1, threshold: float = 0.9,
                 freeze_backbone: bool = False, execution: Execution | str = Execution.SPARSE):
        n = cifar_units(depth)
        super().__init__("basic", [n] * len(widths), list(widths), num_classes=num_classes, in_channels=in_channels, halting="none")
        self.execution = Execution.of(execution)  # ResNet's own is for halting; this one decides the exits' path
        self.threshold = float(threshold)
        self.freeze_backbone = freeze_backbone
        self.exits = nn.ModuleList(ExitHead(block.out_channels, num_classes) for block in self.blocks[:-1])
        self.exit_names = [f"after stage {i + 1}" for i in range(len(self.blocks))]
        if freeze_backbone:
            for name, parameter in self.named_parameters():
                parameter.requires_grad_(name.startswith("exits."))

    @property
    def has_sparse_path(self) -> bool:
        return True

    @property
    def has_tile_path(self) -> bool:
        return False

    def train(self, mode: bool = True) -> "EarlyExitResNet":
        """A frozen backbone stays in eval mode (its BatchNorm statistics are the trained network's)."""
        super().train(mode)
        if mode and self.freeze_backbone:
            for name, module in self.named_children():
                if name != "exits":
                    module.eval()
        return self

    @property
    def exit_threshold(self) -> float:
        """The threshold in force: a what-if's (models/whatif.py), else the trained one."""
        whatif = current_whatif()
        return self.threshold if whatif is None or whatif.threshold is None else float(whatif.threshold)

    def whatif_knobs(self) -> dict:
        """What models/whatif.py may change: the exit threshold, and lesions of the backbone's units;
        "about": what the threshold is, in this model's words."""
        return {"threshold": self.threshold, "units": [name for block in self.blocks for name in block.unit_names],
                "about": {"threshold": {"label": "exit confidence threshold", "description": "an image leaves at the first exit whose "
                                        "confidence (its top class probability) reaches this; lower leaves sooner"}}}

    def trace(self, x: torch.Tensor) -> Trace:
        sparse = not self.training and requested_execution(self) is not Execution.MASKED
        threshold, last = self.exit_threshold, len(self.blocks) - 1
        b = x.shape[0]
        out = self.stem(x)
        stem = float(conv_flops(self.stem, out.shape[-2] * out.shape[-1]))
        if not sparse:  # every exit on every image, then each image's first confident one
            every_exit, spent = zip(*self._exits(out))
            every_exit = list(every_exit)
            with torch.no_grad():
                reached = torch.stack([confidence_of(logits) for logits in every_exit], 1).float()  # [B, E]
                taken = exits_taken(reached, threshold)
                confidence = torch.where(torch.arange(last + 1, device=x.device) <= taken.unsqueeze(1), reached, float("nan"))
            rows = torch.arange(b, device=x.device)
            logits = torch.stack(every_exit, 1)[rows, taken]
            flops = stem + torch.stack(spent, 1).cumsum(1)[rows, taken].float()  # the stages and heads up to the exit taken
        else:  # each stage on the images still inside
            every_exit = None
            taken = torch.full((b,), last, dtype=torch.long, device=x.device)
            confidence = torch.full((b, last + 1), float("nan"), device=x.device)
            logits = x.new_zeros(b, self.classifier.out_features)
            flops = torch.full((b,), stem, device=x.device)
            inside = torch.arange(b, device=x.device)
            for s, block in enumerate(self.blocks):
                out, _, stage = block(out, Execution.MASKED, None)
                exit_logits, head = self._exit(s, out)
                flops[inside] += stage.float() + head
                probability = confidence_of(exit_logits)
                confidence[inside, s] = probability.float()
                leaves = probability >= threshold if s < last else torch.ones_like(probability, dtype=torch.bool)
                taken[inside[leaves]] = s
                logits[inside[leaves]] = exit_logits[leaves].to(logits.dtype)
                if s < last:
                    keep = torch.nonzero(~leaves).squeeze(1)
                    if keep.numel() == 0:
                        break
                    out, inside = out.index_select(0, keep), inside[keep]
        return Trace(logits=logits, flops=flops, dense_flops=self.exit_costs(x)[1], exit_confidence=confidence, exit_taken=taken,
                     extras={"exit_logits": every_exit} if self.training else {})

    def _exit(self, s: int, out: torch.Tensor) -> tuple[torch.Tensor, float]:
        """Exit s's logits for the stage output `out`, and the FLOPs of its head (the last exit: the dense network's own)."""
        if s == len(self.blocks) - 1:
            return self.classifier(self.head(out)), float(linear_flops(self.classifier))
        return self.exits[s](out), self.exits[s].flops(out.shape[-2], out.shape[-1])

    def _exits(self, out: torch.Tensor):
        """For the stem's output of every image: each exit's (logits, FLOPs [B] of its stage, as the
        block ran it (a what-if's removed units spend nothing), plus its head)."""
        for s, block in enumerate(self.blocks):
            out, _, stage = block(out, Execution.MASKED, None)
            exit_logits, head = self._exit(s, out)
            yield exit_logits, stage.float() + head

    def every_exit(self, x: torch.Tensor) -> list[torch.Tensor]:
        """Each exit's logits for every image (the masked reference, training, choosing a threshold)."""
        return [logits for logits, _ in self._exits(self.stem(x))]

    def exit_costs(self, x: torch.Tensor) -> tuple[list[float], float]:
        """FLOPs of an image like x that leaves at exit s (the stem, stages 1..s and exit heads 1..s,
        the last exit being the dense network's own head), and the dense network's FLOPs (no side
        exits). The first stage keeps the stem's size, each later one halves it."""
        h, w = x.shape[-2:]
        spent = float(conv_flops(self.stem, h * w))
        dense, costs = spent + linear_flops(self.classifier), []
        for index, block in enumerate(self.blocks):
            stride = 1 if index == 0 else 2
            h_out, w_out = (h + stride - 1) // stride, (w + stride - 1) // stride
            stage = block.dense_flops(h_out * w_out, h * w)
            dense += stage
            last = index == len(self.blocks) - 1
            spent += stage + (linear_flops(self.classifier) if last else self.exits[index].flops(h_out, w_out))
            costs.append(float(spent))
            h, w = h_out, w_out
        return costs, float(dense)

    @torch.no_grad()
    def calibrate(self, batches, flops_budget: float) -> dict:
        """Choose the threshold on held-out images (`batches` of (images, labels); never the test
        set): the one with the highest accuracy among those whose mean FLOPs stay within
        `flops_budget` of the dense network's (ties: the cheaper). Every exit's logits are
        computed once; each candidate threshold (every confidence seen) then only re-reads them.
        Sets and returns the threshold with what it gave on those images."""
        was_training = self.training
        self.eval()
        confidences, correct, costs, dense = [], [], None, None
        for images, labels in batches:
            every_exit = self.every_exit(images)
            confidences.append(torch.stack([confidence_of(logits) for logits in every_exit], 1).float().cpu())
            correct.append(torch.stack([logits.argmax(-1) == labels for logits in every_exit], 1).cpu())
            if costs is None:
                costs, dense = self.exit_costs(images)
        self.train(was_training)
        confidence, correct = torch.cat(confidences), torch.cat(correct)
        cost = torch.tensor(costs) / dense
        last = confidence.shape[1] - 1
        best = None
        for threshold in torch.unique(confidence[:, :last]).tolist() + [float("inf")]:
            taken = exits_taken(confidence, threshold)
            accuracy = float(correct[torch.arange(len(taken)), taken].float().mean())
            flops = float(cost[taken].mean())
            if flops <= flops_budget and (best is None or (accuracy, -flops) > (best[1], -best[2])):
                best = (threshold, accuracy, flops, torch.bincount(taken, minlength=last + 1).tolist())
        if best is None:
            raise ValueError(f"no threshold keeps the FLOPs within {flops_budget} of the dense network's on the held-out images")
        self.threshold = float(best[0]) if best[0] != float("inf") else 1.0
        if hasattr(self, "registry_kwargs"):  # what the checkpoint's card records
            self.registry_kwargs["threshold"] = self.threshold
        return {"threshold": self.threshold, "flops_budget": flops_budget, "examples": len(correct), "heldout_accuracy": best[1],
                "heldout_flops_ratio": best[2], "heldout_exits": best[3],
                "how": "highest accuracy on held-out training images among the thresholds within the FLOPs budget"}

    def task_loss(self, trace: Trace, targets: torch.Tensor) -> torch.Tensor:
        """The sum of every exit's cross-entropy (BranchyNet's, equal weights)."""
        return sum(F.cross_entropy(logits, targets) for logits in trace.extras["exit_logits"])


@register_model(family="early-exit")
def early_exit_resnet(depth: int = 32, **kwargs) -> EarlyExitResNet:
    """Early-exit ResNet: a classifier after each stage, an image leaves at the first confident one"""
    return EarlyExitResNet(depth=depth, **kwargs)
