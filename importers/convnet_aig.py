"""ConvNet-AIG checkpoints of the authors' code (Veit & Belongie, PyTorch 0.3) -> ours.

    ponderscope import convnet-aig runs/NAME/model_best.pth.tar --out checkpoints/NAME --model aig_resnet110

What their `train.py` (CIFAR) and `train_img.py` (ImageNet) save: `torch.save` of a dict
{epoch, state_dict, best_prec1[, optimizer]}, the state dict of a DataParallel model (every key
starts with 'module.'), written by PyTorch 0.3 from a GPU: the legacy (non-zip) format with
`torch.cuda.FloatStorage` storages on 'cuda:0' and no BatchNorm `num_batches_tracked`. A bare
state dict (with or without 'module.') is read too.

The file is read with `torch.load(map_location="cpu", weights_only=True)` and nothing else: a
pickle that names code (a class, a function such as os.system) is refused before anything runs.

The network is read off the names and shapes: stem (3x3 conv: CIFAR; 7x7: ImageNet), blocks per
stage (layerS.B.*), basic or bottleneck (conv3), widths (layerS.0.conv1), classes (linear). Names
are mapped by `ponderscope.models.aig.official_to_ours`; every tensor must find its place and every place
its tensor, with the right shape.
"""
from __future__ import annotations

import copy
import math
import re
from dataclasses import dataclass
from pathlib import Path

import torch

from ponderscope.models import create_model, list_models
from ponderscope.models.aig import convert_official_state_dict, official_to_ours, ours_to_official
from ponderscope.models.resnet import CIFAR_DEPTHS, IMAGENET_LAYOUTS, IMAGENET_WIDTHS, layout_depth

from .common import Imported, ImportFailed, check_depth, load_converted, parse_model_name

FORMAT = "convnet-aig"

# The authors' test-time input pipelines. train.py: ToTensor + Normalize((0.4914, 0.4822, 0.4465),
# (0.2023, 0.1994, 0.2010)) on the 32x32 CIFAR images; train_img.py: Scale(256), CenterCrop(224),
# ToTensor, Normalize(ImageNet mean / std).
CIFAR_PREPROCESS = {
    "input_size": [32, 32],
    "channels": 3,
    "mean": [0.4914, 0.4822, 0.4465],
    "std": [0.2023, 0.1994, 0.2010],
    "normalize": "mean_std",
    "resize": "stretch",
}
IMAGENET_PREPROCESS = {
    "input_size": [224, 224],
    "channels": 3,
    "mean": [0.485, 0.456, 0.406],
    "std": [0.229, 0.224, 0.225],
    "normalize": "mean_std",
    "resize": "shorter_then_center_crop",
    "resize_shorter": 256,
}

KEY_MAPPING = (
    "DataParallel's 'module.' prefix dropped; the gate's layerS.B.fc1 / fc1bn / fc2 moved to "
    "layerS.B.gate.fc1 / fc1bn / fc2; every other name kept (conv1, bn1, layerS.B.convK / bnK, "
    "layerS.B.shortcut.0 / .1, linear)"
)
NOTES = [
    "Their gate adds Gumbel noise at test time too (its decisions are random); here the test-time "
    "gate is deterministic: a block runs iff logit_run > logit_skip.",
    "Their gate BN is a BatchNorm1d applied to a [B, 16, 1, 1] tensor (fails on PyTorch >= 0.4); "
    "it is loaded as a BatchNorm2d: same names, shapes and arithmetic.",
    "Their gates pool with avg_pool2d(x, x.size(2)) and their heads with a fixed AvgPool2d (8 for "
    "CIFAR, 7 for ImageNet); ours pool globally: the same numbers on square inputs of the trained "
    "size (resolution 'train'), not at other sizes.",
]

_BLOCK_KEY = re.compile(r"^layer(\d+)\.(\d+)\.")


@dataclass
class Layout:
    stem: str  # "cifar" (3x3 conv) or "imagenet" (7x7 conv + max-pool)
    blocks_per_stage: list[int]
    widths: list[int]
    bottleneck: bool
    num_classes: int

    @property
    def depth(self) -> int:
        return layout_depth(self.blocks_per_stage, self.bottleneck)


def read(source: Path, name: str, num_classes: int | None) -> tuple[Imported, list[Path]]:
    wanted = parse_model_name(name, ("aig",))
    checkpoint = _load(source)
    state, info, dropped = _split(checkpoint, source)
    prefix = "module." if any(key.startswith("module.") for key in state) else ""
    theirs = {}  # our name -> theirs, for what the file holds
    for key in state:
        ours = official_to_ours(key)
        if ours in theirs:
            raise ImportFailed(f"variables {theirs[ours]!r} and {key!r} are the same after dropping 'module.': which one is meant?")
        theirs[ours] = key
    converted = convert_official_state_dict(state)
    counters_filled = len(converted) - len(state)

    def their_name(ours: str) -> str:  # also for what the file lacks
        return theirs.get(ours, prefix + ours_to_official(ours))

    def called(ours: str) -> str:
        return repr(their_name(ours))

    layout = _layout(converted, called)
    check_depth(wanted, layout.blocks_per_stage, layout.depth)
    if num_classes is not None and num_classes != layout.num_classes:
        raise ImportFailed(
            f"--num-classes {num_classes} does not match the checkpoint: {called('linear.weight')} has "
            f"shape {list(converted['linear.weight'].shape)}, {layout.num_classes} classes"
        )
    model_name, kwargs = _registered(layout)
    try:
        model = create_model(model_name, **kwargs)
    except (ValueError, TypeError, RuntimeError) as error:
        raise ImportFailed(f"the checkpoint's layout {layout} cannot be built: {error}") from None
    load_converted(model, converted, {ours: their_name(ours) for ours in [*model.state_dict(), *converted]})

    dataset, classes, preprocess, notes = _data(layout)
    imported = Imported(
        model=model,
        source_format=FORMAT,
        converted={
            "tensors_read": len(state),
            "key_mapping": KEY_MAPPING,
            "layout": {
                "stem": layout.stem,
                "block": "bottleneck" if layout.bottleneck else "basic",
                "blocks_per_stage": layout.blocks_per_stage,
                "widths": layout.widths,
                "num_classes": layout.num_classes,
                "depth": layout.depth,
            },
            "bn_counters_filled": counters_filled,  # num_batches_tracked = 0: PyTorch 0.3 did not save them
            "dropped": dropped,
            "info": info,
        },
        preprocess=preprocess,
        classes=classes,
        dataset=dataset,
        notes=NOTES + notes,
    )
    return imported, [source]


def _load(source: Path):
    if not source.is_file():
        raise ImportFailed(f"{source}: no such file (give the .pth.tar that train.py / train_img.py wrote)")
    try:
        return torch.load(source, map_location="cpu", weights_only=True)
    except Exception as error:  # noqa: BLE001 - whatever torch.load raises, the user gets one line
        text = str(error)
        if "Weights only load failed" in text:
            found = re.search(r"GLOBAL ([\w.]+)", text)
            what = f"it names {found.group(1)!r}, which is code, not data" if found else "it holds more than tensors and numbers"
            raise ImportFailed(
                f"{source}: refused by torch.load(weights_only=True): {what}; nothing in it was run "
                "(a checkpoint of the authors' train.py holds only tensors and numbers)"
            ) from None
        first = text.strip().splitlines()[0][:200] if text.strip() else "no details"
        raise ImportFailed(f"{source}: not a PyTorch checkpoint torch.load can read ({type(error).__name__}: {first})") from None


def _split(checkpoint, source: Path) -> tuple[dict, dict, list[str]]:
    """-> (the state dict, what is kept as information, what is dropped)."""
    if not isinstance(checkpoint, dict):
        raise ImportFailed(f"{source}: holds a {type(checkpoint).__name__}, not a checkpoint dict {{epoch, state_dict, best_prec1}} or a state dict")
    info, dropped = {}, []
    if "state_dict" in checkpoint:
        state = checkpoint["state_dict"]
        if not isinstance(state, dict):
            raise ImportFailed(f"{source}: 'state_dict' is a {type(state).__name__}, not a dict of tensors")
        for key, value in checkpoint.items():
            if key == "state_dict":
                continue
            if key in ("epoch", "best_prec1") and _number(value) is not None:
                info[key] = _number(value)
            elif key == "optimizer":
                dropped.append(f"optimizer ({_count_tensors(value)} tensors: SGD momentum buffers and settings)")
            else:
                dropped.append(f"{key} ({type(value).__name__})")
    elif any(isinstance(value, torch.Tensor) for value in checkpoint.values()):
        state = checkpoint
    else:
        keys = ", ".join(repr(k) for k in list(checkpoint)[:5]) or "none"
        raise ImportFailed(f"{source}: a dict without 'state_dict' and without tensors (keys: {keys}): not a ConvNet-AIG checkpoint")
    for key, value in state.items():
        if not isinstance(key, str):
            raise ImportFailed(f"{source}: the state dict has a key {key!r} that is not a name")
        if not isinstance(value, torch.Tensor):
            raise ImportFailed(f"variable {key!r} is a {type(value).__name__}, not a tensor")
    if not state:
        raise ImportFailed(f"{source}: the state dict is empty")
    return dict(state), info, dropped


def _number(value) -> int | float | None:
    if isinstance(value, torch.Tensor) and value.numel() == 1:
        value = value.item()
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    return value if isinstance(value, int) or math.isfinite(value) else None


def _count_tensors(value) -> int:
    if isinstance(value, torch.Tensor):
        return 1
    if isinstance(value, dict):
        return sum(_count_tensors(v) for v in value.values())
    if isinstance(value, (list, tuple)):
        return sum(_count_tensors(v) for v in value)
    return 0


def _layout(state: dict[str, torch.Tensor], called) -> Layout:
    def tensor(key: str, ndim: int) -> torch.Tensor:
        if key not in state:
            raise ImportFailed(f"missing variable {called(key)}: not a ConvNet-AIG ResNet of the authors' code")
        value = state[key]
        if value.dim() != ndim:
            raise ImportFailed(f"variable {called(key)} has shape {list(value.shape)}, a {ndim}-D tensor is needed")
        return value

    stem_conv = tensor("conv1.weight", 4)
    if stem_conv.shape[-1] not in (3, 7) or stem_conv.shape[-2] != stem_conv.shape[-1]:
        raise ImportFailed(f"variable {called('conv1.weight')} has shape {list(stem_conv.shape)}: a 3x3 (CIFAR) or 7x7 (ImageNet) stem is needed")
    if stem_conv.shape[1] != 3:
        raise ImportFailed(f"variable {called('conv1.weight')} has shape {list(stem_conv.shape)}: the authors' networks take RGB images (3 channels)")
    blocks: dict[int, int] = {}
    for key in state:
        match = _BLOCK_KEY.match(key)
        if match:
            stage, index = int(match.group(1)), int(match.group(2))
            blocks[stage] = max(blocks.get(stage, 0), index + 1)
    if not blocks:
        raise ImportFailed(f"missing variable {called('layer1.0.conv1.weight')}: no residual blocks (layerS.B.*) in the checkpoint")
    stages = range(1, max(blocks) + 1)
    widths = [int(tensor(f"layer{stage}.0.conv1.weight", 4).shape[0]) for stage in stages]
    bottleneck = any(re.match(r"^layer\d+\.\d+\.conv3\.weight$", key) for key in state)
    return Layout(
        stem="cifar" if stem_conv.shape[-1] == 3 else "imagenet",
        blocks_per_stage=[blocks.get(stage, 0) for stage in stages],
        widths=widths,
        bottleneck=bottleneck,
        num_classes=int(tensor("linear.weight", 2).shape[0]),
    )


def _registered(layout: Layout) -> tuple[str, dict]:
    """The registry's name and kwargs for the layout: a registered network where one fits, else
    the generic `aig_resnet`; the card stores them so that `load_checkpoint` rebuilds it."""
    blocks, depth = layout.blocks_per_stage, layout.depth
    if layout.stem == "cifar" and not layout.bottleneck and len(blocks) == 3 and len(set(blocks)) == 1:
        kwargs = {"num_classes": layout.num_classes, "widths": layout.widths}
        if depth in CIFAR_DEPTHS and f"aig_resnet{depth}" in list_models():
            return f"aig_resnet{depth}", kwargs
        return "aig_resnet", {"depth": depth, **kwargs}
    if (layout.stem == "imagenet" and layout.bottleneck and IMAGENET_LAYOUTS.get(depth) == blocks
            and layout.widths == list(IMAGENET_WIDTHS)):
        return f"aig_resnet{depth}", {"num_classes": layout.num_classes}
    return "aig_resnet", {
        "blocks_per_stage": blocks,
        "widths": layout.widths,
        "bottleneck": layout.bottleneck,
        "stem": layout.stem,
        "num_classes": layout.num_classes,
    }


def _data(layout: Layout) -> tuple[str, list[str], dict, list[str]]:
    """-> (dataset, class names, preprocess, notes), from the stem and the number of classes."""
    from .classes import CIFAR10, imagenet_classes

    k = layout.num_classes
    numbered = [str(i) for i in range(k)]
    if layout.stem == "cifar":
        preprocess = copy.deepcopy(CIFAR_PREPROCESS)
        if k == 10:
            return "cifar-10", list(CIFAR10), preprocess, []
        if k == 100:
            return "cifar-100", numbered, preprocess, ["CIFAR-100 class names are not available offline: classes are numbered 0..99."]
        return "unknown", numbered, preprocess, [f"{k} classes with a CIFAR-style stem: dataset unknown, classes numbered; the authors' CIFAR normalisation is assumed."]
    preprocess = copy.deepcopy(IMAGENET_PREPROCESS)
    if k in (1000, 1001):
        return "imagenet", list(imagenet_classes(k)), preprocess, []
    return "unknown", numbered, preprocess, [f"{k} classes with an ImageNet-style stem: dataset unknown, classes numbered; the ImageNet normalisation is assumed."]
