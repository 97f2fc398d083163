"""Tile sparsity for SACT (models/tiles.py, execution "tiles") gives the masked reference's numbers
by tests/test_sparse.py's criteria (logits within 1e-4, halting decisions and FLOPs identical,
ponder / weights / probabilities within 1e-4): random weights at several halting densities, basic
and bottleneck units, odd map sizes, several tile sizes, both routes of the halting branch, the
authors' styles, the bundled checkpoints and the ImageNet-shape SACT ResNet-50 at 224x224."""
from __future__ import annotations

import pytest
import torch

from ponderscope import models
from ponderscope.models import create_model, tiles
from ponderscope.models.sparse import Execution, executing, has_tile_path, requested_execution
from tests.conftest import TEST_DEVICE, randomize_batchnorm
from tests.test_sparse import CHECKPOINTS, assert_same, bundled_inputs, resnet, set_halting


def traces(model, x, execution="tiles"):
    """(masked, `execution`) traces of x on TEST_DEVICE."""
    model.to(TEST_DEVICE)
    x = x.to(TEST_DEVICE)
    with torch.no_grad():
        with executing("masked"):
            masked = model.trace(x)
        with executing(execution):
            other = model.trace(x)
    return masked, other


@pytest.fixture
def tile_calls(monkeypatch):
    """Records (tile size, halo, active tiles, all tiles) of every unit computed on tiles."""
    calls = []
    original = tiles.unit_residual_tiles

    def recording(unit, x, grid, plan, active):
        calls.append((plan.size, plan.halo, int(active.numel()), plan.tiles))
        return original(unit, x, grid, plan, active)

    monkeypatch.setattr(tiles, "unit_residual_tiles", recording)
    return calls


@pytest.fixture(params=["rows", "map"])
def halting_route(request, monkeypatch):
    """The halting branch at the running rows (CPU's route) or over the whole map (the GPU's)."""
    monkeypatch.setattr(tiles, "HALTING_BY_ROWS_ON", (torch.device(TEST_DEVICE).type,) if request.param == "rows" else ())
    return request.param


@pytest.mark.parametrize("size", [3, 5, None])
@pytest.mark.parametrize("density", ["none", "all", "mixed", "sparse"])
@pytest.mark.parametrize("name,shape", [("sact_resnet", (3, 1, 17, 13)), ("sact_resnet50", (2, 3, 61, 75))])
def test_tiles_equal_masked(monkeypatch, tile_calls, halting_route, name, shape, density, size):
    """Tiles forced (never the whole-map fallback); odd sizes: tiles that hang off the map."""
    monkeypatch.setattr(tiles, "TILE_DENSE_ABOVE", float("inf"))
    if size is not None:
        monkeypatch.setattr(tiles, "TILE_SIZES", (size,))
    model = set_halting(resnet(name), density)
    assert_same(*traces(model, torch.randn(*shape)))
    if density in ("mixed", "sparse"):  # some unit ran on part of the map: on its active tiles
        assert tile_calls
        assert size is None or any(active < every for _, _, active, every in tile_calls)  # (7x7 tiles cover these small maps)
        assert {halo for _, halo, _, _ in tile_calls} == {2 if name == "sact_resnet" else 1}
    elif density == "all":  # nothing runs after the first unit
        assert not tile_calls


@pytest.mark.parametrize("name,shape", [("sact_resnet", (2, 1, 15, 18)), ("sact_resnet50", (1, 3, 50, 64))])
def test_the_whole_map_fallback_equals_masked(monkeypatch, tile_calls, name, shape):
    """When the active tiles' windows would hold more than the map, the unit runs on the whole map
    and is added through the mask."""
    monkeypatch.setattr(tiles, "TILE_DENSE_ABOVE", 0.0)
    model = set_halting(resnet(name, seed=1), "mixed")
    assert_same(*traces(model, torch.randn(*shape)))
    assert not tile_calls


def test_the_tiles_cover_exactly_the_active_positions(monkeypatch, tile_calls):
    """A tile runs iff one of its positions is active (counted from the trace's unit counts)."""
    monkeypatch.setattr(tiles, "TILE_DENSE_ABOVE", float("inf"))
    monkeypatch.setattr(tiles, "TILE_SIZES", (4,))
    model = set_halting(resnet("sact_resnet", seed=2), "mixed")
    x = torch.randn(2, 1, 16, 16)
    with torch.no_grad(), executing("tiles"):
        trace = model.to("cpu").trace(x)
    expected = []
    for block in trace.blocks:
        for l in range(1, block.halting.shape[1]):
            active = block.units > l
            if active.any() and not active.all():
                b, h, w = active.shape
                expected.append(int(active.view(b, h // 4, 4, w // 4, 4).any(4).any(2).sum()))
    assert [n for _, _, n, _ in tile_calls] == expected and expected


def test_tiles_input_gradients_match_masked(monkeypatch):
    """With autograd (eval mode) the tile path is differentiable: the masked path's input gradients."""
    monkeypatch.setattr(tiles, "TILE_DENSE_ABOVE", float("inf"))
    monkeypatch.setattr(tiles, "TILE_SIZES", (4,))
    for name, shape in (("sact_resnet", (2, 1, 11, 14)), ("sact_resnet50", (1, 3, 40, 36))):
        model = set_halting(resnet(name, seed=4), "mixed")
        grads = []
        for execution in ("masked", "tiles"):
            xi = torch.randn(*shape, generator=torch.Generator().manual_seed(0)).requires_grad_(True)
            with executing(execution):
                model.trace(xi).logits.square().sum().backward()
            grads.append(xi.grad)
        torch.testing.assert_close(grads[1], grads[0], atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("name,kwargs,shape", [
    ("sact_resnet", dict(depth=20, widths=[8, 16, 32], style="sact_tf_cifar"), (2, 3, 32, 32)),
    ("sact_resnet", dict(depth=26, stem="imagenet", units_per_block=[2, 2, 3, 1], widths=[4, 8, 16, 32], num_classes=1001,
                         style="sact_tf_imagenet"), (2, 3, 57, 71)),
])
@pytest.mark.parametrize("size", [4, None])
def test_tiles_equal_masked_for_the_authors_styles(monkeypatch, tile_calls, name, kwargs, shape, size):
    """Their CIFAR style (leaky ReLUs, biases, activated halting branches, 'SAME' strided convs,
    option-A shortcuts) and ImageNet style ('SAME' max pool, biases)."""
    monkeypatch.setattr(tiles, "TILE_DENSE_ABOVE", float("inf"))
    if size is not None:
        monkeypatch.setattr(tiles, "TILE_SIZES", (size,))
    torch.manual_seed(0)
    model = randomize_batchnorm(create_model(name, **kwargs))
    with torch.no_grad():
        for module in model.modules():
            if hasattr(module, "local_conv"):
                module.local_conv.weight.mul_(4.0)
                module.local_conv.bias.fill_(2.0)
    assert_same(*traces(model.eval(), torch.randn(shape)))
    assert tile_calls


@pytest.mark.parametrize("forced", [False, True])
@pytest.mark.parametrize("name", ["fmnist_sact_resnet32", "cluttered_sact_resnet20"])
def test_bundled_sact_checkpoints_tiles_equal_masked(monkeypatch, tile_calls, name, forced):
    """As shipped (tile sizes by map, the whole-map fallback where it pays) and with tiles forced."""
    path = CHECKPOINTS / name
    if not (path / "card.json").is_file():
        pytest.skip(f"{path} not bundled")
    if forced:
        monkeypatch.setattr(tiles, "TILE_DENSE_ABOVE", float("inf"))
        monkeypatch.setattr(tiles, "TILE_SIZES", (4,))
    model = models.load_checkpoint(path)
    masked, tiled = traces(model, bundled_inputs(model, 6))
    assert_same(masked, tiled)
    assert (masked.flops < masked.dense_flops).any()
    if forced:
        assert tile_calls


def test_imagenet_shape_sact_resnet50_at_224(tile_calls):
    """The ImageNet-shape SACT ResNet-50 (random weights, halting that varies over the image as
    the bench sets it up: halting conv weights x10, one bias), 224x224, the shipped tile sizes
    and whole-map fallback: about half the FLOPs, the numbers of masked execution."""
    torch.manual_seed(0)
    model = create_model("sact_resnet50").eval()
    with torch.no_grad():
        for block in model.blocks:
            for branch in block.halting:
                branch.local_conv.weight.mul_(10.0)
                branch.local_conv.bias.fill_(5.0)  # (at 4.5 one position's halting sum lies within rounding of 1 - eps
                #                                    on one thread: masked differs there from sparse and tiles alike)
    generator = torch.Generator().manual_seed(0)
    low = torch.randn(2, 3, 14, 14, generator=generator)
    x = torch.nn.functional.interpolate(low, size=224, mode="bilinear", align_corners=False) + 0.1 * torch.randn(2, 3, 224, 224, generator=generator)
    masked, tiled = traces(model, x)
    assert_same(masked, tiled)
    ratio = float(masked.flops.mean()) / masked.dense_flops
    assert 0.4 < ratio < 0.6, ratio
    assert tile_calls and {size for size, _, _, _ in tile_calls} <= set(tiles.TILE_SIZES)


def test_halos_and_the_choice_of_tile_size():
    basic, bottleneck = resnet("sact_resnet").blocks[0].units[1], resnet("sact_resnet50").blocks[0].units[1]
    assert tiles.halo_of(basic) == 2 and tiles.halo_of(bottleneck) == 1
    ring, inner = tiles.unit_costs(bottleneck)  # conv1 (1x1) on the ring; conv2 (3x3) and conv3 (1x1) on the tile
    assert ring == 2 * 256 * 64 and inner == 2 * 9 * 64 * 64 + 2 * 64 * 256
    grid = models.sparse.grid(1, 16, 16, torch.device("cpu"))
    x = torch.zeros(256, 256)
    blob = torch.zeros(1, 16, 16, dtype=torch.bool)
    blob[0, :8, :8] = True  # one 8 x 8 tile: the 8 x 8 tiling wastes nothing on the mask, least on halos
    plan, active = tiles.choose(bottleneck, grid, x, blob)
    assert plan.size == 8 and active.tolist() == [0]
    dots = torch.zeros(1, 16, 16, dtype=torch.bool)
    dots[0, ::8, ::8] = True  # four single positions: 2 x 2 tiles
    plan, active = tiles.choose(bottleneck, grid, x, dots)
    assert plan.size == 2 and active.numel() == 4
    assert tiles.choose(bottleneck, grid, x, torch.ones(1, 16, 16, dtype=torch.bool)) is None  # every tile: the whole map is cheaper
    assert tiles.choose(bottleneck, grid, x, blob, sizes=(5,))[0].size == 5


def test_the_layout_tables():
    """Windows clamp onto the map and say which of their positions lie on it."""
    plan = tiles.TileLayout(2, 5, 6, 4, 1, torch.device("cpu"), torch.float32)  # 2 x 2 tiles per image
    assert plan.tiles == 8 and plan.window == 6
    assert plan.window_rows.shape == (8, 36) and plan.out_rows.shape == (8, 16)
    # image 1, tile (1, 1): rows 3..8 and columns 3..8 of the window's span; only rows 3, 4 and columns 3..5 on the map
    inside = plan.inside[1][7].view(6, 6)
    assert inside.sum() == 2 * 3 and inside[:2, :3].all()
    assert plan.window_rows[7].view(6, 6)[0, 0] == 30 + 3 * 6 + 3
    assert int(plan.inside[0].sum()) == 2 * 5 * 6  # every position of the map in exactly one tile
    assert sorted(plan.out_rows[plan.inside[0].bool()].tolist()) == list(range(60))
    mask = torch.zeros(2, 5, 6, dtype=torch.bool)
    mask[1, 4, 5] = True
    assert plan.active_tiles(mask).tolist() == [7]


def test_tiles_elsewhere_are_sparse():
    """Only SACT has a tile path; elsewhere "tiles" runs sparse (the same code)."""
    sact, act = resnet("sact_resnet"), resnet("act_resnet")
    aig = create_model("aig_resnet", depth=8, widths=(2, 4, 8), in_channels=1)
    rnn = create_model("act_lstm", input_kind="bytes", output_size=4)
    dense = create_model("resnet", depth=8, widths=(2, 4, 8), in_channels=1)
    assert has_tile_path(sact) and not any(has_tile_path(m) for m in (act, aig, rnn, dense))
    with executing("tiles"):
        assert requested_execution(sact) is Execution.TILES
        assert all(requested_execution(m) is Execution.SPARSE for m in (act, aig, rnn))
    act.execution = "tiles"
    masked, tiled = traces(set_halting(act, "mixed"), torch.randn(3, 1, 12, 12), execution="tiles")
    assert_same(masked, tiled)
