"""The SACT authors' TensorFlow checkpoints (github mfigurnov/sact) -> ponderscope ResNets.

Their graphs, and so their variable names (TF-Slim; NHWC maps, HWIO kernels):

CIFAR-10, cifar_model.py, top scope `resnet_residual` (style "sact_tf_cifar"):
    Conv/{weights,biases}                                   stem 3x3 conv with a bias, no BN
    block_B/unit_U/residual/preact/{gamma,beta,moving_*}    bn1 (then leaky ReLU)
    block_B/unit_U/residual/conv1/weights, conv1/BatchNorm  conv1, bn2
    block_B/unit_U/residual/conv2/{weights,biases}          conv2 (with a bias)
    BatchNorm/*, logits/{weights,biases}                    head: mean -> BN -> lrelu -> 1x1 conv
ImageNet, imagenet_model.py, top scope `resnet_v2` (style "sact_tf_imagenet"):
    conv1/{weights,biases}; postnorm/*; logits/{weights,biases}
    blockB/unit_U/bottleneck_v2/{preact, conv1[/BatchNorm], conv2[/BatchNorm], conv3, shortcut}
Halting branches, after every unit but a block's last (resnet_act.py):
    .../unit_U/halting_proba/{local_bn, local_conv, global_bn, global_conv}   SACT
    .../unit_U/halting_proba/{global_bn, global_conv}                          ACT

What a training script adds (optimizer slots, `global_step`, moving-average shadows, anything
outside the network's top scope) is ignored and listed in the card; any other variable under the
network's scope is an error, as is one the model needs and misses.
The checkpoint is read by importers/tf_bundle.py (TF's tensor-bundle format parsed as data):
TensorFlow is not needed. SOURCE may also be the `.tar.gz` as the authors publish it (a folder
with `checkpoint` and model.ckpt-NNN.*): it is unpacked safely (importers/archive.py) into a
temporary folder, read, and removed; the card names the archive and its sha256.
"""
from __future__ import annotations

import os
import re
from pathlib import Path

import numpy as np
import torch

from ponderscope import models
from ponderscope.models.resnet import IMAGENET_LAYOUTS, layout_depth

from .archive import is_archive, unpacked
from .classes import names_for
from .common import FAMILY_OF_PREFIX, ImportFailed, Imported, check_depth, load_converted, parse_model_name
from .tf_bundle import list_variables, read_bundle, resolve_prefix, shard_files

# Their names, per network: top scope, stem conv, head BN, block scope, a unit's residual scope.
NAMING = {
    "cifar": {"scope": "resnet_residual", "stem": "Conv", "head_bn": "BatchNorm", "block": "block_{}", "body": "residual"},
    "imagenet": {"scope": "resnet_v2", "stem": "conv1", "head_bn": "postnorm", "block": "block{}", "body": "bottleneck_v2"},
}
SCOPES = {naming["scope"]: kind for kind, naming in NAMING.items()}
# Variables a training run writes beside the model's own: never part of the network.
TRAINING_STATE = re.compile(r"(^|/)(global_step|Momentum|ExponentialMovingAverage|RMSProp(_1)?|Adam(_1)?|beta[12]_power|learning_rate)(/|$)")
BN = {"gamma": "weight", "beta": "bias", "moving_mean": "running_mean", "moving_variance": "running_var"}
UNIT = re.compile(r"^block_?(?P<block>\d+)/unit_(?P<unit>\d+)/(?P<rest>.+)$")

PREPROCESS = {
    # cifar_data_provider.py at test time: the 32x32 image (0..255), per_image_standardization.
    "cifar": {"input_size": [32, 32], "channels": 3, "normalize": "per_image_standardization", "resize": "stretch",
              "size_multiple": 4},
    # imagenet_data_provider.py at test time (inception_preprocessing, eval): central crop of
    # 87.5% of each side, bilinear resize to 224x224, then [0, 1] -> [-1, 1]. Their ponder-map
    # script (imagenet_ponder_map.py) runs the whole image instead: resolution "native" here,
    # up to 640 pixels on the long side (their README: "between 320x240 and 640x480").
    "imagenet": {"input_size": [224, 224], "channels": 3, "normalize": "minus_one_to_one",
                 "resize": "center_crop_fraction", "crop_fraction": 0.875, "native_max_side": 640},
}


def _kernel(value: np.ndarray) -> torch.Tensor:
    """HWIO -> OIHW."""
    return torch.from_numpy(np.ascontiguousarray(value.transpose(3, 2, 0, 1)))


def _matrix(name: str, value: np.ndarray) -> torch.Tensor:
    """A 1x1 conv's [1, 1, Cin, Cout] kernel -> a linear layer's [Cout, Cin] weight."""
    if value.ndim != 4 or value.shape[:2] != (1, 1):
        raise ImportFailed(f"variable {name!r} has shape {list(value.shape)}, expected a 1x1 kernel [1, 1, Cin, Cout]")
    return torch.from_numpy(np.ascontiguousarray(value[0, 0].T))


def _unit_target(kind: str, rest: str) -> str | None:
    """Our name (relative to the unit) for a unit's variable, or None if it has none."""
    parts = rest.split("/")
    if parts[0] != NAMING[kind]["body"] or len(parts) < 3:
        return None
    layer, leaf = parts[1], parts[-1]
    if layer == "preact" and len(parts) == 3 and leaf in BN:
        return f"bn1.{BN[leaf]}"
    convs = ("conv1", "conv2") if kind == "cifar" else ("conv1", "conv2", "conv3", "shortcut")
    if layer in convs:
        if len(parts) == 3 and leaf in ("weights", "biases"):
            return f"{layer}.{'weight' if leaf == 'weights' else 'bias'}"
        if len(parts) == 4 and parts[2] == "BatchNorm" and leaf in BN:
            after = {"conv1": "bn2", "conv2": "bn3"}.get(layer) if kind == "imagenet" else {"conv1": "bn2"}.get(layer)
            return f"{after}.{BN[leaf]}" if after else None
    return None


def _halting_target(family: str, rest: str) -> str | None:
    """Our name (relative to the branch) for a halting-branch variable."""
    parts = rest.split("/")
    if len(parts) != 3 or parts[0] != "halting_proba":
        return None
    layer, leaf = parts[1], parts[2]
    if layer in ("local_bn", "global_bn") and leaf in BN:
        ours = layer if family == "sact" else "bn"
        return None if (family == "act" and layer == "local_bn") else f"{ours}.{BN[leaf]}"
    if layer == "local_conv" and family == "sact":
        return {"weights": "local_conv.weight", "biases": "local_conv.bias"}.get(leaf)
    if layer == "global_conv":
        if family == "sact":
            return "global_linear.weight" if leaf == "weights" else None
        return {"weights": "linear.weight", "biases": "linear.bias"}.get(leaf)
    return None


def _layout(names: list[str], scope: str) -> tuple[str, list[int], str]:
    """(stem kind, units per block, family) read off the variable names."""
    units: dict[int, int] = {}
    family = "dense"
    for name in names:
        match = UNIT.match(name[len(scope) + 1:])
        if match:
            block, unit = int(match["block"]), int(match["unit"])
            units[block] = max(units.get(block, 0), unit)
            if "/halting_proba/local_conv/" in name:
                family = "sact"
            elif "/halting_proba/global_conv/biases" in name and family != "sact":
                family = "act"
    if not units or sorted(units) != list(range(1, len(units) + 1)):
        raise ImportFailed(f"no residual blocks block_1.. / block1.. under {scope!r}: not a checkpoint of the authors' ResNets")
    return SCOPES[scope], [units[b] for b in sorted(units)], family


def convert(tensors: dict[str, np.ndarray], kind: str, scope: str, units_per_block: list[int], family: str
            ) -> tuple[dict[str, torch.Tensor], dict[str, str], list[str]]:
    """-> (our state dict, our name -> their name, the variables ignored: training state and
    anything outside `scope`). Unrecognised variables under `scope` raise."""
    state: dict[str, torch.Tensor] = {}
    source: dict[str, str] = {}
    ignored: list[str] = []
    naming = NAMING[kind]
    for name, value in tensors.items():
        if is_ignored(name, scope):
            ignored.append(name)
            continue
        rest = name[len(scope) + 1:]
        parts = rest.split("/")
        target = None
        if parts[0] == naming["stem"] and len(parts) == 2 and parts[1] in ("weights", "biases"):
            target = "stem.weight" if parts[1] == "weights" else "stem.bias"
        elif parts[0] == naming["head_bn"] and len(parts) == 2 and parts[1] in BN:
            target = f"final_bn.{BN[parts[1]]}"
        elif parts[0] == "logits" and len(parts) == 2 and parts[1] in ("weights", "biases"):
            target = "classifier.weight" if parts[1] == "weights" else "classifier.bias"
        else:
            match = UNIT.match(rest)
            if match and int(match["block"]) >= 1 and int(match["unit"]) >= 1:
                block, unit = int(match["block"]) - 1, int(match["unit"]) - 1
                inner = _unit_target(kind, match["rest"])
                if inner is not None:
                    target = f"blocks.{block}.units.{unit}.{inner}"
                elif family != "dense" and block < len(units_per_block) and unit < units_per_block[block] - 1:
                    branch = _halting_target(family, match["rest"])
                    target = f"blocks.{block}.halting.{unit}.{branch}" if branch else None
        if target is None:
            raise ImportFailed(f"unexpected variable {name!r} (shape {list(value.shape)}): not part of a {family} {kind} ResNet of the authors' code")
        if target in state:
            raise ImportFailed(f"variable {name!r} maps onto {target}, which {source[target]!r} already filled")
        if not np.issubdtype(value.dtype, np.floating):
            raise ImportFailed(f"variable {name!r} holds {value.dtype} values; the network's variables are floats")
        if target == "classifier.weight" or target.endswith(("global_linear.weight", ".linear.weight")):
            tensor = _matrix(name, value)
        elif value.ndim == 4:
            tensor = _kernel(value)
        else:
            tensor = torch.from_numpy(np.array(value))
        state[target] = tensor
        source[target] = name
    return state, source, sorted(ignored)


def is_ignored(name: str, scope: str) -> bool:
    """Training state, or a variable outside the network's top scope."""
    return bool(TRAINING_STATE.search(name)) or not name.startswith(scope + "/")


def _as_stored(shape, key: str) -> list[int]:
    """Our tensor shape written as theirs (OIHW -> HWIO; a linear [out, in] -> [1, 1, in, out])."""
    shape = list(shape)
    if len(shape) == 4:
        return [shape[2], shape[3], shape[1], shape[0]]
    if len(shape) == 2:
        return [1, 1, shape[1], shape[0]]
    return shape


def their_name(key: str, kind: str, scope: str) -> str:
    """The authors' variable name for one of our state-dict keys (the inverse of `convert`), to
    name a variable the checkpoint lacks."""
    bn = {ours: theirs for theirs, ours in BN.items()}
    naming = NAMING[kind]
    param = key.rsplit(".", 1)[-1]
    conv_leaf = "weights" if param == "weight" else "biases"
    if key.startswith("stem."):
        return f"{scope}/{naming['stem']}/{conv_leaf}"
    if key.startswith("final_bn."):
        return f"{scope}/{naming['head_bn']}/{bn.get(param, param)}"
    if key.startswith("classifier."):
        return f"{scope}/logits/{conv_leaf}"
    parts = key.split(".")  # blocks.B.units.U.layer.param or blocks.B.halting.U.layer.param
    block = naming["block"].format(int(parts[1]) + 1)
    unit = f"{scope}/{block}/unit_{int(parts[3]) + 1}"
    layer = parts[4]
    if parts[2] == "units":
        body = naming["body"]
        bn_of = {"bn1": "preact", "bn2": "conv1/BatchNorm", "bn3": "conv2/BatchNorm"}
        if layer in bn_of:
            return f"{unit}/{body}/{bn_of[layer]}/{bn.get(param, param)}"
        return f"{unit}/{body}/{layer}/{conv_leaf}"
    theirs = {"bn": "global_bn", "linear": "global_conv", "global_linear": "global_conv"}.get(layer, layer)
    leaf = bn.get(param, param) if theirs.endswith("_bn") else conv_leaf
    return f"{unit}/halting_proba/{theirs}/{leaf}"


def _build(family: str, kind: str, depth: int, units_per_block: list[int], widths: list[int], num_classes: int):
    """Our model of the authors' network: the registered fixed-depth name (sact_resnet32,
    sact_resnet101) when the layout is that name's own, else the family's generic builder with
    the layout spelled out (unequal blocks, narrow test networks)."""
    prefix = {v: k for k, v in FAMILY_OF_PREFIX.items()}[family] or ""
    style = "sact_tf_cifar" if kind == "cifar" else "sact_tf_imagenet"
    kwargs = {"num_classes": num_classes, "style": style}
    fixed = f"{prefix}resnet{depth}"
    if kind == "cifar":
        standard = fixed in models.list_models() and len(set(units_per_block)) == 1
        kwargs["widths"] = widths
        if not standard:
            kwargs.update(depth=depth, units_per_block=units_per_block)
    else:
        standard = fixed in models.list_models() and units_per_block == IMAGENET_LAYOUTS.get(depth) and widths[0] == 64
        if not standard:
            kwargs.update(depth=depth, stem="imagenet", units_per_block=units_per_block, widths=widths)
    name = fixed if standard else f"{prefix}resnet"
    try:
        return models.create_model(name, **kwargs)
    except (ValueError, TypeError) as error:
        raise ImportFailed(f"cannot build {name} for this checkpoint: {error}") from None


def checkpoint_folder(folder: Path, archive: str) -> Path:
    """The one folder of an unpacked archive that holds a TF checkpoint (a `checkpoint` state file
    or *.index files)."""
    found = sorted({p.parent for p in folder.rglob("checkpoint") if p.is_file()} | {p.parent for p in folder.rglob("*.index") if p.is_file()})
    if not found:
        raise ImportFailed(f"{archive} holds no TF checkpoint (no `checkpoint` file and no *.index file in it)")
    if len(found) > 1:
        names = ", ".join(str(p.relative_to(folder)) or "." for p in found[:5])
        raise ImportFailed(f"{archive} holds TF checkpoints in {len(found)} folders ({names}): unpack it and import the one you mean")
    return found[0]


def read_archive(source: Path, name: str, num_classes: int | None, scratch: Path | None = None,
                 open_file=open) -> tuple[Imported, list[Path]]:
    """The authors' published .tar.gz: unpacked into `scratch` (default: the temporary folder),
    read, and removed again. -> (Imported, [the archive]): the card's sha256 is the archive's.
    `open_file` writes the unpacked files (a test's full disk)."""
    with unpacked(source, scratch, open_file) as folder:
        try:
            inside = checkpoint_folder(folder, source.name)
            imported, _ = read(inside, name, num_classes)
            prefix = resolve_prefix(inside)
        except ImportFailed as error:  # name the archive's members, not the temporary folder
            raise ImportFailed(str(error).replace(str(folder) + os.sep, f"{source.name}:")) from None
        imported.converted["unpacked"] = f"{source.name}: {prefix.relative_to(folder).as_posix()}"
    return imported, [source]


def read(source: Path, name: str, num_classes: int | None, scratch: Path | None = None) -> tuple[Imported, list[Path]]:
    if is_archive(source):
        return read_archive(Path(source), name, num_classes, scratch)
    wanted = parse_model_name(name, ("dense", "act", "sact"))
    prefix = resolve_prefix(source)
    names = list(list_variables(prefix))
    scopes = {n.split("/")[0] for n in names} & set(SCOPES)
    if len(scopes) != 1:
        found = sorted({n.split("/")[0] for n in names})[:8]
        raise ImportFailed(f"{prefix}: expected the variables of one of the authors' networks under 'resnet_residual/' (CIFAR) or 'resnet_v2/' (ImageNet); found top scopes {found}")
    scope = scopes.pop()
    kind = SCOPES[scope]
    naming = NAMING[kind]
    _, units_per_block, family = _layout(names, scope)
    if family != wanted.family:
        what = {"sact": "halting_proba/local_conv", "act": "halting_proba/global_conv"}.get(family, "no halting branches")
        raise ImportFailed(f"the checkpoint holds a {family} network ({what}), not the {wanted.family} network {name!r} asks for")
    depth = layout_depth(units_per_block, bottleneck=kind == "imagenet")
    check_depth(wanted, units_per_block, depth)
    tensors = read_bundle(prefix, wanted=lambda n: not is_ignored(n, scope))  # training state is not read

    stem = tensors.get(f"{scope}/{naming['stem']}/weights")
    logits = tensors.get(f"{scope}/logits/weights")
    first = tensors.get(f"{scope}/block1/unit_1/bottleneck_v2/conv1/weights") if kind == "imagenet" else stem
    for variable, value in ((naming["stem"], stem), ("logits", logits), ("block1/unit_1/bottleneck_v2/conv1", first)):
        if value is None:
            raise ImportFailed(f"missing variable '{scope}/{variable}/weights'")
        if value.ndim != 4:
            raise ImportFailed(f"variable '{scope}/{variable}/weights' has shape {list(value.shape)}, expected a 4-D HWIO kernel")
    if stem.shape[2] != 3:
        raise ImportFailed(f"variable '{scope}/{naming['stem']}/weights' has shape {list(stem.shape)}: the authors' networks read RGB images (3 input channels)")
    classes_in_file = int(logits.shape[-1])
    if classes_in_file < 1:
        raise ImportFailed(f"variable '{scope}/logits/weights' has shape {list(logits.shape)}: no classes")
    if num_classes is not None and num_classes != classes_in_file:
        raise ImportFailed(f"--num-classes {num_classes} does not match the checkpoint's logits ({classes_in_file} classes, {scope}/logits/weights {list(logits.shape)})")
    base = int(first.shape[-1])
    widths = [base * 2**i for i in range(len(units_per_block))]
    model = _build(family, kind, depth, units_per_block, widths, classes_in_file)

    state, source_names, ignored = convert(tensors, kind, scope, units_per_block, family)
    ignored = sorted(set(ignored) | {n for n in names if is_ignored(n, scope)})
    expected = model.state_dict()
    for key, value in expected.items():
        if key.endswith("num_batches_tracked"):  # batch-norm step counters are ours alone (TF keeps none)
            state.setdefault(key, torch.tensor(0, dtype=torch.long))
        source_names.setdefault(key, their_name(key, kind, scope))
        if key in state and tuple(state[key].shape) != tuple(value.shape):  # said in their layout
            raise ImportFailed(f"variable {source_names[key]!r} has shape {list(tensors[source_names[key]].shape)}; the {name} of this checkpoint needs {_as_stored(value.shape, key)}")
    load_converted(model, state, source_names)
    dataset = {"cifar": {10: "cifar-10", 100: "cifar-100"}, "imagenet": {1000: "imagenet", 1001: "imagenet"}}[kind].get(classes_in_file, f"{kind}-like ({classes_in_file} classes)")
    converted = {
        "scope": scope,
        "network": f"{name} as in the authors' {'cifar_model.py' if kind == 'cifar' else 'imagenet_model.py'} (style {model.style_name})",
        "units_per_block": units_per_block,
        "widths": widths,
        "num_classes": classes_in_file,
        "tensors_converted": len(source_names) - sum(1 for k in expected if k.endswith("num_batches_tracked")),
        "ignored": ignored[:50] + ([f"... {len(ignored) - 50} more"] if len(ignored) > 50 else []),
        "layout": "kernels HWIO -> OIHW; 1x1 logits / halting kernels -> linear [out, in]; BN gamma/beta/moving_mean/moving_variance -> weight/bias/running_mean/running_var",
    }
    notes = []
    if kind == "imagenet" and classes_in_file == 1001:
        notes.append("1001 classes: class 0 is TF-Slim's 'background'; 1..1000 are ImageNet's in synset order")
    imported = Imported(
        model=model,
        source_format="sact-tf",
        converted=converted,
        preprocess=dict(PREPROCESS[kind]),
        classes=names_for(dataset, classes_in_file),
        dataset=dataset,
        notes=notes,
    )
    return imported, shard_files(prefix)
