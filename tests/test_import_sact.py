"""`ponderscope import sact-tf`: the SACT authors' TF checkpoints, number for number.

Three checks, each independent of the code under test:
- fixtures written by the authors' own graph code (tests/fixtures/sact_tf, made by
  make_fixtures.py under TensorFlow): the imported model's logits, per-block ponder cost, units
  executed and halting distribution equal what their TF graph computed;
- tests/sact_tf_reference.py, a re-statement of their graphs op by op on the raw TF variables,
  run on the same checkpoints and on full-size random ones (ResNet-101, 1001 classes);
- sparse and masked execution of the authors' variants agree, as for our own models.
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from ponderscope import models
from ponderscope.importers import ImportFailed, import_checkpoint
from ponderscope.importers import read as read_source
from ponderscope.importers.tf_bundle import read_bundle
from tests.conftest import randomize_batchnorm
from tests.sact_tf_reference import Graph

FIXTURES = Path(__file__).parent / "fixtures" / "sact_tf"
KINDS = {"cifar": "resnet_residual", "imagenet": "resnet_v2"}
MODEL_NAMES = {  # fixture -> the --model name the layout asks for (2 units per CIFAR block; 1-2-2-1)
    "cifar_sact": "sact_resnet14", "cifar_act": "act_resnet14", "cifar_vanilla": "resnet14",
    "imagenet_sact": "sact_resnet20", "imagenet_act": "act_resnet26", "imagenet_vanilla": "resnet20",
}


def fixture(name: str) -> tuple[Path, dict]:
    folder = FIXTURES / name
    reference = dict(np.load(folder / "reference.npz"))
    return folder / "model.ckpt-0", reference


def nchw(images: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.ascontiguousarray(images.transpose(0, 3, 1, 2))).float()


def block_scopes(reference: dict) -> list[str]:
    scopes = sorted({k.split("/")[0] for k in reference if k.endswith("/ponder_cost")},
                    key=lambda s: int(s.replace("block_", "").replace("block", "")))
    return scopes


@pytest.mark.parametrize("name", sorted(MODEL_NAMES))
@pytest.mark.parametrize("execution", ["sparse", "masked"])
def test_fixture_matches_authors_tf_graph(tmp_path, name, execution):
    prefix, reference = fixture(name)
    out = import_checkpoint("sact-tf", prefix, tmp_path / "ckpt", MODEL_NAMES[name], command="test")
    model = models.load_checkpoint(out)
    model.execution = execution
    suffixes = [""] + (["_odd"] if "inputs_odd" in reference else [])
    for suffix in suffixes:
        with torch.no_grad():
            trace = model.trace(nchw(reference["inputs" + suffix]))
        logits = reference["logits" + suffix]
        np.testing.assert_allclose(trace.logits.numpy(), logits, rtol=1e-4, atol=1e-4 * np.abs(logits).max())
        # FLOPs as their flopsometer counts them (their SACT total is [batch, batch], columns equal)
        flops = reference["flops" + suffix]
        np.testing.assert_array_equal(trace.flops.numpy().astype(np.int64), flops[:, 0] if flops.ndim == 2 else flops)
        scopes = block_scopes(reference)
        if name.endswith("vanilla"):
            assert trace.blocks is None and not scopes
            continue
        assert len(trace.blocks) == len(scopes)
        for block, scope in zip(trace.blocks, scopes):
            units = reference[f"{scope}/num_units{suffix}"]
            cost = reference[f"{scope}/ponder_cost{suffix}"]
            distribution = reference[f"{scope}/halting_distribution{suffix}"]
            if name.startswith(("cifar_act", "imagenet_act")):  # per image in TF; per position (constant) here
                units, cost = units[:, None, None], cost[:, None, None]
                distribution = distribution[:, None, None, :]
            shape = tuple(block.units.shape)
            np.testing.assert_array_equal(block.units.numpy(), np.broadcast_to(units, shape), err_msg=f"{scope}{suffix} units")
            np.testing.assert_allclose(block.ponder_cost.numpy(), np.broadcast_to(cost, shape), atol=2e-5, err_msg=f"{scope}{suffix} ponder")
            ours = block.halting.permute(0, 2, 3, 1).numpy()
            np.testing.assert_allclose(ours, np.broadcast_to(distribution, ours.shape), atol=2e-5, err_msg=f"{scope}{suffix} distribution")
        if name.endswith("sact"):  # the summed ponder map at input resolution (their sact_map)
            from ponderscope.core.answers import ponder_json

            image = reference["inputs" + suffix][:1]
            with torch.no_grad():
                one = model.trace(nchw(image))
            size = tuple(image.shape[1:3])
            total = np.array(ponder_json(one, size, maps="input")["total"])  # on the input's pixels, as their map
            np.testing.assert_allclose(total, reference["ponder_cost_map" + suffix][0, :, :, 0], atol=1e-3)
            if suffix:  # 57x71: the strides do not divide the input, and nearest resizing twice is not once
                continue
            # the answer's own total lies on the finest block's grid: their map is it, nearest-upsampled
            grid = ponder_json(one, size)
            finest = np.array(grid["total"])
            rows = (np.arange(size[0]) * finest.shape[0]) // size[0]
            columns = (np.arange(size[1]) * finest.shape[1]) // size[1]
            np.testing.assert_allclose(finest[rows][:, columns], reference["ponder_cost_map" + suffix][0, :, :, 0], atol=1e-3)


def test_fixtures_halt_in_more_than_one_way():
    """The fixtures would check little if every position ran every unit."""
    for name in ("cifar_sact", "imagenet_sact", "cifar_act", "imagenet_act"):
        _, reference = fixture(name)
        for scope in block_scopes(reference):
            units = reference[f"{scope}/num_units"]
            if units.size > 1:
                assert len(np.unique(units)) >= 2 or name.endswith("act"), (name, scope, np.unique(units))
        all_units = np.concatenate([reference[f"{s}/num_units"].ravel() for s in block_scopes(reference)])
        assert len(np.unique(all_units)) >= 2, name


@pytest.mark.parametrize("name", sorted(MODEL_NAMES))
def test_independent_reference_agrees_with_authors_graph(name):
    """tests/sact_tf_reference.py reproduces their TF outputs: it can stand in for TF below."""
    prefix, reference = fixture(name)
    variables = read_bundle(prefix)
    kind = name.split("_")[0]
    graph = Graph(variables, kind, name.split("_")[1])
    out = graph(reference["inputs"])
    np.testing.assert_allclose(out["logits"].numpy(), reference["logits"], rtol=1e-4, atol=1e-4 * np.abs(reference["logits"]).max())
    for scope, results in out["blocks"].items():
        if results:
            units = reference[f"{scope}/num_units"]
            ours = results["num_units"].numpy()
            np.testing.assert_array_equal(ours if name.endswith("sact") else ours[:, 0, 0], units)


# --------------------------------------------------------------------------------------------
# Full-size networks with random weights (names and shapes from the authors' graphs)
# --------------------------------------------------------------------------------------------


def random_variables(manifest: dict, seed: int, halting_bias: float) -> dict:
    """Values for every variable of a manifest {name: shape}: O(1) activations, BN statistics
    that matter, and halting biases that make units halt at different depths."""
    rng = np.random.default_rng(seed)
    out = {}
    for name, shape in manifest.items():
        leaf = name.split("/")[-1]
        if leaf == "weights":
            fan_in = int(np.prod(shape[:-1]))
            # halting kernels small, so that h stays near sigmoid(bias) and units halt at many depths
            scale = 0.3 if "halting_proba" in name else 1.0
            value = rng.normal(0, scale * np.sqrt(1.0 / fan_in), shape)
        elif leaf == "gamma" or leaf == "moving_variance":
            value = rng.uniform(0.5, 1.5, shape)
        elif leaf == "biases" and "halting_proba" in name:
            value = np.full(shape, halting_bias) + rng.normal(0, 0.5, shape)
        else:
            value = rng.normal(0, 0.1, shape)
        out[name] = value.astype(np.float32)
    return out


def import_manifest(monkeypatch, variables: dict, model_name: str):
    """importers.read on a checkpoint that holds `variables` (the file layer stubbed out: it is
    tested on real TF files above)."""
    import ponderscope.importers.sact_tf as sact_tf

    monkeypatch.setattr(sact_tf, "resolve_prefix", lambda source: Path(source))
    monkeypatch.setattr(sact_tf, "shard_files", lambda prefix: [])
    monkeypatch.setattr(sact_tf, "list_variables", lambda prefix: {n: ("float32", v.shape) for n, v in variables.items()})
    monkeypatch.setattr(sact_tf, "read_bundle", lambda prefix, wanted=None: {n: v for n, v in variables.items() if wanted is None or wanted(n)})
    imported, _ = read_source("sact-tf", "in-memory", model_name)
    return imported


@pytest.mark.parametrize("kind,family,model_name,size,halting_bias,registered", [
    ("imagenet", "sact", "sact_resnet101", (1, 64, 80, 3), 0.0, "sact_resnet101"),
    ("cifar", "sact", "sact_resnet32", (2, 32, 32, 3), -1.0, "sact_resnet32"),
    ("cifar", "act", "act_resnet110", (2, 32, 32, 3), -2.0, "act_resnet110"),
])
def test_full_size_random_checkpoint(monkeypatch, kind, family, model_name, size, halting_bias, registered):
    manifest = json.loads((FIXTURES / "manifests.json").read_text())[f"{kind}_{family}_{model_name.split('resnet')[1]}"]
    variables = random_variables(manifest, seed=1, halting_bias=halting_bias)
    imported = import_manifest(monkeypatch, variables, model_name)
    model = imported.model
    assert model.registry_name == registered and model.style_name == f"sact_tf_{kind}"
    assert len(imported.classes) == (1001 if kind == "imagenet" else 10)
    images = np.random.default_rng(2).uniform(-1, 1, size).astype(np.float32)
    expected = Graph(variables, kind, family)(images)
    with torch.no_grad():
        trace = model.trace(nchw(images))
    logits = expected["logits"].numpy()
    np.testing.assert_allclose(trace.logits.numpy(), logits, rtol=1e-3, atol=1e-3 * np.abs(logits).max())
    varied, depths = 0, set()
    for block, results in zip(trace.blocks, expected["blocks"].values()):
        np.testing.assert_array_equal(block.units.numpy(), results["num_units"].numpy())
        np.testing.assert_allclose(block.ponder_cost.numpy(), results["ponder_cost"].numpy(), atol=1e-4)
        varied += len(np.unique(results["num_units"].numpy())) > 1
        depths |= set(np.unique(results["num_units"].numpy()).tolist())
    # the halting biases make units halt at several depths (and, for SACT, unevenly over positions)
    assert len(depths) >= 2 and (varied >= 1 or family == "act"), (depths, varied)


def test_unequal_blocks(monkeypatch):
    """Their --model 4_5_3 (units per block): their names of ResNet-32 with units removed."""
    manifest = json.loads((FIXTURES / "manifests.json").read_text())["cifar_sact_32"]
    drop = ("block_1/unit_5/", "block_1/unit_4/halting_proba", "block_3/unit_5/", "block_3/unit_4/", "block_3/unit_3/halting_proba")
    manifest = {n: shape for n, shape in manifest.items() if not any(d in n for d in drop)}
    variables = random_variables(manifest, seed=3, halting_bias=-1.0)
    model = import_manifest(monkeypatch, variables, "sact_resnet26").model
    assert [len(b.units) for b in model.blocks] == [4, 5, 3] and model.registry_name == "sact_resnet"
    images = np.random.default_rng(4).standard_normal((2, 32, 32, 3)).astype(np.float32)
    expected = Graph(variables, "cifar", "sact")(images)
    with torch.no_grad():
        trace = model.trace(nchw(images))
    np.testing.assert_allclose(trace.logits.numpy(), expected["logits"].numpy(), rtol=1e-3, atol=1e-3 * float(expected["logits"].abs().max()))
    for block, results in zip(trace.blocks, expected["blocks"].values()):
        np.testing.assert_array_equal(block.units.numpy(), results["num_units"].numpy())


# --------------------------------------------------------------------------------------------
# The authors' variants under sparse execution
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name,kwargs,shape", [
    ("sact_resnet", dict(depth=20, widths=[8, 16, 32], style="sact_tf_cifar"), (2, 3, 32, 32)),
    ("act_resnet", dict(depth=20, widths=[8, 16, 32], style="sact_tf_cifar"), (4, 3, 32, 32)),
    ("sact_resnet", dict(depth=26, stem="imagenet", units_per_block=[2, 2, 3, 1], widths=[4, 8, 16, 32], num_classes=1001,
                         style="sact_tf_imagenet"), (2, 3, 57, 71)),
    ("act_resnet", dict(depth=26, stem="imagenet", units_per_block=[2, 2, 3, 1], widths=[4, 8, 16, 32], num_classes=1001,
                        style="sact_tf_imagenet"), (4, 3, 64, 64)),
])
def test_sparse_equals_masked_for_authors_variants(name, kwargs, shape):
    torch.manual_seed(0)
    model = randomize_batchnorm(models.create_model(name, **kwargs))
    with torch.no_grad():  # halting that varies over positions / images
        for module in model.modules():
            if hasattr(module, "local_conv"):
                module.local_conv.weight.mul_(4.0)
                module.local_conv.bias.fill_(2.0)
            elif hasattr(module, "linear") and hasattr(module, "bn"):
                module.linear.weight.mul_(8.0)
                module.linear.bias.fill_(2.0)
    model.eval()
    x = torch.randn(shape)
    with torch.no_grad():
        model.execution = "masked"
        masked = model.trace(x)
        model.execution = "sparse"
        sparse = model.trace(x)
    torch.testing.assert_close(sparse.logits, masked.logits, rtol=1e-4, atol=1e-4)
    distinct = set()
    for a, b in zip(sparse.blocks, masked.blocks):
        assert torch.equal(a.units, b.units)
        torch.testing.assert_close(a.ponder_cost, b.ponder_cost, rtol=1e-5, atol=1e-5)
        distinct |= set(a.units.unique().tolist())
    assert len(distinct) >= 2, distinct
    torch.testing.assert_close(sparse.flops, masked.flops)


# --------------------------------------------------------------------------------------------
# Refusals: one line naming the variable, nothing written
# --------------------------------------------------------------------------------------------


def test_wrong_family_depth_and_classes_are_refused(tmp_path):
    prefix, _ = fixture("cifar_sact")
    cases = [
        ("act_resnet14", "sact network"),
        ("sact_resnet32", "ResNet-14"),
        ("sact_resnet", "unknown model name"),
        ("aig_resnet14", "aig network"),
    ]
    for model_name, message in cases:
        with pytest.raises(ImportFailed, match=message):
            import_checkpoint("sact-tf", prefix, tmp_path / "out", model_name)
        assert not (tmp_path / "out").exists()
    with pytest.raises(ImportFailed, match="--num-classes 1000"):
        import_checkpoint("sact-tf", prefix, tmp_path / "out", "sact_resnet14", num_classes=1000)
    assert not (tmp_path / "out").exists()
    assert not any(tmp_path.iterdir())  # no staging directory left behind either


def _write_bundle_copy(tmp_path: Path, edit) -> Path:
    """A checkpoint with the fixture's tensors after `edit(dict)`, written in TF's format by the
    test's own minimal writer (tests/tf_bundle_writer.py)."""
    from tests.tf_bundle_writer import write_tensors

    prefix, _ = fixture("cifar_sact")
    tensors = read_bundle(prefix)
    edit(tensors)
    target = tmp_path / "edited" / "model.ckpt-1"
    target.parent.mkdir()
    write_tensors(target, tensors)
    return target


@pytest.mark.parametrize("edit,message", [
    (lambda t: t.pop("resnet_residual/block_2/unit_1/residual/conv2/biases"), "missing variable 'resnet_residual/block_2/unit_1/residual/conv2/biases'"),
    (lambda t: t.__setitem__("resnet_residual/block_2/unit_1/residual/extra/weights", np.zeros((1, 1, 8, 8), np.float32)), "unexpected variable 'resnet_residual/block_2/unit_1/residual/extra/weights'"),
    (lambda t: t.__setitem__("resnet_residual/block_1/unit_1/residual/conv1/weights", np.zeros((3, 3, 4, 5), np.float32)), r"'resnet_residual/block_1/unit_1/residual/conv1/weights' has shape \[3, 3, 4, 5\]; the sact_resnet14 of this checkpoint needs \[3, 3, 4, 4\]"),
    (lambda t: t.__setitem__("resnet_residual/block_1/unit_1/residual/conv1/weights", np.zeros((3, 3, 4, 4), np.int32)), "'resnet_residual/block_1/unit_1/residual/conv1/weights' holds int32"),
    (lambda t: t.__setitem__("resnet_residual/Conv/weights", np.zeros((3, 3, 1, 4), np.float32)), "'resnet_residual/Conv/weights' has shape \\[3, 3, 1, 4\\]: the authors' networks read RGB"),
    (lambda t: t.__setitem__("resnet_residual/block_1/unit_1/halting_proba/global_conv/weights", np.zeros((1, 1, 4, 1, 1), np.float32)), "'resnet_residual/block_1/unit_1/halting_proba/global_conv/weights' has shape \\[1, 1, 4, 1, 1\\], expected a 1x1 kernel"),
])
def test_bad_variables_are_named(tmp_path, edit, message):
    source = _write_bundle_copy(tmp_path, edit)
    with pytest.raises(ImportFailed, match=message):
        import_checkpoint("sact-tf", source, tmp_path / "out", "sact_resnet14")
    assert not (tmp_path / "out").exists()


def test_training_state_is_ignored_and_listed(tmp_path):
    prefix, _ = fixture("cifar_sact")
    names = set(read_bundle(prefix))
    assert "global_step" in names and any(n.endswith("/Momentum") for n in names)
    out = import_checkpoint("sact-tf", prefix, tmp_path / "ckpt", "sact_resnet14", command="ponderscope import ...")
    card = json.loads((out / "card.json").read_text())
    ignored = card["source"]["converted"]["ignored"]
    assert "global_step" in ignored and any(n.endswith("/Momentum") for n in ignored)
    # a variable outside the network's scope (a training run's own) is ignored and listed too
    source = _write_bundle_copy(tmp_path, lambda t: t.__setitem__("losses/avg", np.zeros((1,), np.float32)))
    edited = import_checkpoint("sact-tf", source, tmp_path / "edited_ckpt", "sact_resnet14")
    assert "losses/avg" in json.loads((edited / "card.json").read_text())["source"]["converted"]["ignored"]
    assert card["source"]["format"] == "sact-tf"
    assert set(card["source"]["sha256"]) == {"model.ckpt-0.index", "model.ckpt-0.data-00000-of-00001"}
    import hashlib

    assert card["source"]["sha256"]["model.ckpt-0.index"] == hashlib.sha256((FIXTURES / "cifar_sact" / "model.ckpt-0.index").read_bytes()).hexdigest()
    assert card["preprocess"]["normalize"] == "per_image_standardization"
    assert card["classes"][3] == "cat"
    assert card["model_kwargs"]["style"] == "sact_tf_cifar"
    # an existing non-empty --out is never overwritten
    with pytest.raises(ImportFailed, match="exists"):
        import_checkpoint("sact-tf", prefix, out, "sact_resnet14")
    assert json.loads((out / "card.json").read_text()) == card


def test_imagenet_card_classes_and_preprocessing(tmp_path):
    prefix, _ = fixture("imagenet_sact")
    out = import_checkpoint("sact-tf", prefix, tmp_path / "ckpt", "sact_resnet20")
    card = json.loads((out / "card.json").read_text())
    assert len(card["classes"]) == 1001 and card["classes"][0] == "background" and card["classes"][1] == "tench"
    assert card["preprocess"]["normalize"] == "minus_one_to_one"
    assert card["dataset"] == "imagenet"


def test_cli_import_one_line_error(tmp_path, capsys):
    from ponderscope.cli import main

    prefix, _ = fixture("imagenet_sact")
    with pytest.raises(SystemExit) as error:
        main(["import", "sact-tf", str(prefix), "--out", str(tmp_path / "x"), "--model", "sact_resnet101"])
    assert str(error.value).startswith("ponderscope import: ") and "\n" not in str(error.value)
    main(["import", "sact-tf", str(prefix), "--out", str(tmp_path / "ok"), "--model", "sact_resnet20"])
    out = tmp_path / "ok"
    assert capsys.readouterr().out.splitlines() == [f"wrote {out}/model.safetensors and {out}/card.json"]
    model = models.load_checkpoint(out)
    assert model.card.data["import_command"].startswith("ponderscope import sact-tf")
    # the written checkpoint computes what the authors' TF graph computed (logits, FLOPs, units)
    _, reference = fixture("imagenet_sact")
    with torch.no_grad():
        trace = model.trace(nchw(reference["inputs"]))
    np.testing.assert_allclose(trace.logits.numpy(), reference["logits"], rtol=1e-4, atol=1e-4 * np.abs(reference["logits"]).max())
    flops = reference["flops"]
    np.testing.assert_array_equal(trace.flops.numpy().astype(np.int64), flops[:, 0] if flops.ndim == 2 else flops)
    for block, scope in zip(trace.blocks, block_scopes(reference)):
        np.testing.assert_array_equal(block.units.numpy(), reference[f"{scope}/num_units"])


@pytest.mark.parametrize("name", sorted(MODEL_NAMES))
def test_error_names_are_the_authors(name):
    """`their_name` (used to name a missing variable) inverts the mapping for every tensor."""
    from ponderscope.importers.sact_tf import their_name

    prefix, _ = fixture(name)
    imported, _ = read_source("sact-tf", prefix, MODEL_NAMES[name])
    names = set(read_bundle(prefix))
    kind = name.split("_")[0]
    keys = [k for k in imported.model.state_dict() if not k.endswith("num_batches_tracked")]
    assert {their_name(k, kind, KINDS[kind]) for k in keys} == {n for n in names if not ("global_step" in n or n.endswith("/Momentum"))}
