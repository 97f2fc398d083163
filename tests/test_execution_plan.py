"""Execution planned per device (ponderscope.core.execution): the faster of sparse and masked is
chosen per batch size, cached on disk, chosen per call without touching the module (two threads
at two batch sizes each run their own and the answer says which), and the faces take
--execution auto|sparse|masked."""
from __future__ import annotations

import json
import threading
from pathlib import Path

import pytest
import torch
from PIL import Image

import ponderscope as ps
from ponderscope import models
from ponderscope.core import execution as plans
from ponderscope.core.execution import ANALYSIS_BATCH, ExecutionPlan, plan_execution
from ponderscope.models.checkpoint import read_card
from ponderscope.models.sparse import Execution, executing, requested_execution

CHECKPOINTS = Path(__file__).resolve().parents[1] / "checkpoints"
SACT = CHECKPOINTS / "fmnist_sact_resnet32"
SHA = "ab" * 32


@pytest.fixture(autouse=True)
def _fresh_plans():
    plans.forget_plans()  # each test measures (or reads its cache) itself
    yield
    plans.forget_plans()


@pytest.fixture
def sact():
    return models.load_checkpoint(SACT)


def fake_timer(monkeypatch, faster: dict[int, Execution]):
    """time_pass replaced: the path `faster[batch]` takes 1 s, the other 2 s; returns the calls."""
    calls = []

    def time_pass(module, x, execution):
        calls.append((x.shape[0], execution))
        return 1.0 if execution is faster[x.shape[0]] else 2.0

    monkeypatch.setattr(plans, "time_pass", time_pass)
    return calls


def no_timing(monkeypatch):
    def time_pass(module, x, execution):
        raise AssertionError("nothing should be timed")

    monkeypatch.setattr(plans, "time_pass", time_pass)


@pytest.mark.parametrize("faster", [{1: Execution.MASKED, ANALYSIS_BATCH: Execution.SPARSE},
                                    {1: Execution.SPARSE, ANALYSIS_BATCH: Execution.MASKED},
                                    {1: Execution.TILES, ANALYSIS_BATCH: Execution.MASKED},
                                    {1: Execution.MASKED, ANALYSIS_BATCH: Execution.TILES}])
def test_the_faster_path_is_chosen_per_batch_size(sact, tmp_path, monkeypatch, faster):
    """A SACT model: sparse, masked and tiles are timed, and the fastest runs."""
    calls = fake_timer(monkeypatch, faster)
    plan = plan_execution(sact, sact.card, "cpu", SHA, "auto", tmp_path)
    assert plan.choices == faster and plan.source == "measured"
    assert plan.timings_ms == {b: {path.value: 1000.0 if faster[b] is path else 2000.0 for path in Execution} for b in faster}
    # one warm-up pass of each path, then the rounds, at each planned batch size, on the model's input shape
    for batch in faster:
        timed = [e for b, e in calls if b == batch]
        rounds = plans.ROUNDS.get(batch, plans.DEFAULT_ROUNDS)
        assert timed.count(Execution.SPARSE) == timed.count(Execution.MASKED) == timed.count(Execution.TILES) == 1 + rounds
    # a batch size not planned takes the nearest planned one (log scale)
    assert [plan.for_batch(b) for b in (1, 2, 7)] == [faster[1]] * 3
    assert [plan.for_batch(b) for b in (8, 32, 64, 250, 1000)] == [faster[ANALYSIS_BATCH]] * 5
    summary = plan.as_json()
    assert summary["mode"] == "auto" and summary["plan"] == {str(b): e.value for b, e in faster.items()}
    assert summary["timings_ms"]["1"] == plan.timings_ms[1] and summary["source"] == "measured" and summary["device"]


@pytest.mark.parametrize("name", ["fmnist_act_resnet32", "fmnist_aig_resnet32"])
def test_tiles_are_timed_only_where_the_model_has_a_tile_path(tmp_path, monkeypatch, name):
    """ACT and ConvNet-AIG have no tile path ("tiles" would run sparse): only sparse and masked are timed."""
    model = models.load_checkpoint(CHECKPOINTS / name)
    calls = fake_timer(monkeypatch, {1: Execution.MASKED, ANALYSIS_BATCH: Execution.SPARSE})
    plan = plan_execution(model, model.card, "cpu", SHA, "auto", tmp_path)
    assert plan.choices == {1: Execution.MASKED, ANALYSIS_BATCH: Execution.SPARSE}
    assert {e for _, e in calls} == {Execution.SPARSE, Execution.MASKED}
    assert all(set(times) == {"sparse", "masked"} for times in plan.timings_ms.values())
    assert plans.paths_of(model) == (Execution.SPARSE, Execution.MASKED)


def test_a_tie_goes_to_sparse_then_masked(sact, tmp_path, monkeypatch):
    monkeypatch.setattr(plans, "time_pass", lambda module, x, execution: 1.0 if execution is not Execution.SPARSE or x.shape[0] > 1 else 2.0)
    plan = plan_execution(sact, sact.card, "cpu", SHA, "auto", tmp_path)
    assert plan.choices == {1: Execution.MASKED, ANALYSIS_BATCH: Execution.SPARSE}


def test_the_rounds_rotate_the_order_of_the_paths(sact, monkeypatch):
    order = []
    monkeypatch.setattr(plans, "time_pass", lambda module, x, execution: order.append(execution) or 1.0)
    plans.time_both(sact, torch.zeros(1, 1, 28, 28), rounds=3)
    s, m, t = Execution.SPARSE, Execution.MASKED, Execution.TILES
    assert order == [s, m, t] + [s, m, t] + [m, t, s] + [t, s, m]  # the warm-up passes, then three rounds


def test_synthetic_inputs_have_the_models_shape():
    sact_card = read_card(SACT)
    x = plans.synthetic_input(models.load_checkpoint(SACT).card, 3)
    assert x.shape == (3, sact_card["preprocess"]["channels"], *sact_card["preprocess"]["input_size"]) and x.dtype == torch.float32
    text = plans.synthetic_input(models.load_checkpoint(CHECKPOINTS / "jargon_act_lstm").card, 2)
    assert text.shape == (2, 100) and text.dtype == torch.long and int(text.max()) < 128
    parity = plans.synthetic_input(models.load_checkpoint(CHECKPOINTS / "parity16_act_rnn").card, 5)
    assert parity.shape == (5, 16) and set(parity.unique().tolist()) <= {-1.0, 0.0, 1.0}


def test_a_plan_is_cached_by_weights_device_and_torch(sact, tmp_path, monkeypatch):
    fake_timer(monkeypatch, {1: Execution.MASKED, ANALYSIS_BATCH: Execution.SPARSE})
    first = plan_execution(sact, sact.card, "cpu", SHA, "auto", tmp_path)
    files = list((tmp_path / "execution-plans").glob("*.json"))
    assert len(files) == 1
    stored = json.loads(files[0].read_text())
    assert stored["key"]["weights_sha256"] == SHA and stored["key"]["torch"] == torch.__version__
    assert stored["key"]["device"] == plans.device_name("cpu") and stored["plan"] == {"1": "masked", str(ANALYSIS_BATCH): "sparse"}

    plans.forget_plans()
    no_timing(monkeypatch)  # a hit: read back, nothing timed
    again = plan_execution(sact, sact.card, "cpu", SHA, "auto", tmp_path)
    assert again.choices == first.choices and again.timings_ms == first.timings_ms and again.source == "cached"

    # other weights, another device or torch: a miss
    calls = fake_timer(monkeypatch, {1: Execution.SPARSE, ANALYSIS_BATCH: Execution.SPARSE})
    other = plan_execution(sact, sact.card, "cpu", "cd" * 32, "auto", tmp_path)
    assert other.source == "measured" and other.choices[1] is Execution.SPARSE and calls
    plans.forget_plans()
    monkeypatch.setattr(plans, "device_name", lambda device: "another CPU, 64 thread(s)")
    assert plan_execution(sact, sact.card, "cpu", SHA, "auto", tmp_path).source == "measured"
    plans.forget_plans()
    monkeypatch.setattr(plans.torch, "__version__", "0.0.1")
    assert plan_execution(sact, sact.card, "cpu", SHA, "auto", tmp_path).source == "measured"
    assert len(list((tmp_path / "execution-plans").glob("*.json"))) == 4


@pytest.mark.parametrize("damage", [
    lambda text: text[: len(text) // 2],                                            # cut short
    lambda text: "not json",
    lambda text: json.dumps({**json.loads(text), "plan": {"1": "fastest", "64": "sparse"}}),  # an unknown execution
    lambda text: json.dumps({**json.loads(text), "plan": {"1": "sparse"}}),          # a batch missing
    lambda text: json.dumps({k: v for k, v in json.loads(text).items() if k != "timings_ms"}),
    lambda text: json.dumps([1, 2, 3]),
])
def test_a_broken_cache_file_is_measured_again(sact, tmp_path, monkeypatch, damage):
    fake_timer(monkeypatch, {1: Execution.MASKED, ANALYSIS_BATCH: Execution.SPARSE})
    plan_execution(sact, sact.card, "cpu", SHA, "auto", tmp_path)
    (path,) = (tmp_path / "execution-plans").glob("*.json")
    path.write_text(damage(path.read_text()))
    plans.forget_plans()
    calls = fake_timer(monkeypatch, {1: Execution.SPARSE, ANALYSIS_BATCH: Execution.MASKED})
    plan = plan_execution(sact, sact.card, "cpu", SHA, "auto", tmp_path)
    assert plan.source == "measured" and calls
    assert plan.choices == {1: Execution.SPARSE, ANALYSIS_BATCH: Execution.MASKED}
    assert json.loads(path.read_text())["plan"] == {"1": "sparse", str(ANALYSIS_BATCH): "masked"}  # rewritten whole


def test_fixed_modes_and_one_path_models_time_nothing(sact, tmp_path, monkeypatch):
    no_timing(monkeypatch)
    for mode in ("sparse", "masked"):
        plan = plan_execution(sact, sact.card, "cpu", SHA, mode, tmp_path)
        assert plan.choices == {} and plan.for_batch(1) is plan.for_batch(250) is Execution(mode) and plan.source == "fixed"
    dense = models.load_checkpoint(CHECKPOINTS / "fmnist_resnet32")
    plan = plan_execution(dense, dense.card, "cpu", SHA, "auto", tmp_path)
    assert plan.choices == {} and plan.source == "one path" and "one code path" in plan.note
    assert plan.for_batch(1) is Execution.of(dense.execution)
    rnn = models.load_checkpoint(CHECKPOINTS / "parity16_rnn")
    assert plan_execution(rnn, rnn.card, "cpu", SHA, "auto", tmp_path).source == "one path"
    assert not (tmp_path / "execution-plans").exists()
    with pytest.raises(ValueError, match="execution must be one of auto, sparse, masked, not 'fast'"):
        plan_execution(sact, sact.card, "cpu", SHA, "fast", tmp_path)


def test_a_model_that_cannot_be_timed_keeps_its_own_execution(sact, tmp_path, monkeypatch):
    def time_pass(module, x, execution):
        raise RuntimeError("out of memory")

    monkeypatch.setattr(plans, "time_pass", time_pass)
    plan = plan_execution(sact, sact.card, "cpu", SHA, "auto", tmp_path)
    assert plan.choices == {} and plan.for_batch(1) is Execution.SPARSE and "timing failed (RuntimeError: out of memory)" in plan.note


def test_the_real_timer_plans_a_bundled_model(sact, tmp_path):
    """No fake: both paths run (briefly) and the plan holds a choice and two timings per batch size."""
    plan = plan_execution(sact, sact.card, "cpu", SHA, "auto", tmp_path)
    assert set(plan.choices) == {1, ANALYSIS_BATCH} and plan.source == "measured"
    for batch, times in plan.timings_ms.items():
        assert times["sparse"] > 0 and times["masked"] > 0 and times["tiles"] > 0
        assert plan.choices[batch] is min(Execution, key=lambda e: times[e.value])
    assert sact.execution is Execution.SPARSE  # the module's own setting is untouched


def test_the_override_is_per_thread(sact):
    seen = {}
    inside = threading.Barrier(2)

    def run(name, execution):
        with executing(execution):
            inside.wait(timeout=10)  # both overrides in force at once
            seen[name] = requested_execution(sact)
            inside.wait(timeout=10)

    threads = [threading.Thread(target=run, args=("a", "masked")), threading.Thread(target=run, args=("b", "sparse"))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert seen == {"a": Execution.MASKED, "b": Execution.SPARSE}
    assert requested_execution(sact) is Execution.SPARSE  # nothing left in force here


def loaded_with_plan(choices: dict[int, Execution]):
    """The bundled SACT model loaded with a plan of our choosing (its own setting: sparse)."""
    model = ps.load(SACT, execution="sparse")
    model.execution_plan = ExecutionPlan("auto", Execution.SPARSE, dict(choices), {b: {"sparse": 1.0, "masked": 1.0} for b in choices},
                                         source="measured", device="test")
    return model


def test_two_threads_at_two_batch_sizes_each_run_their_own_execution():
    """An interactive answer at batch 1 and a background job at the analysis batch on the same
    module at the same moment: each runs (and reports) its own plan entry."""
    model = loaded_with_plan({1: Execution.MASKED, ANALYSIS_BATCH: Execution.SPARSE})
    module, trace = model.module, model.module.trace
    both_inside = threading.Barrier(2)
    ran = {}

    def traced(x):  # the module's own trace, noting which execution is in force while it runs
        both_inside.wait(timeout=30)
        ran[x.shape[0]] = requested_execution(module)
        out = trace(x)
        both_inside.wait(timeout=30)
        return out

    module.trace = traced
    answers = {}

    def interactive():
        answers["image"] = ps.analyze_image(model, Image.new("L", (28, 28), 128))

    def job():
        answers["job"], _ = model.trace(torch.zeros(ANALYSIS_BATCH, 1, 28, 28), background=True)

    threads = [threading.Thread(target=interactive), threading.Thread(target=job)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    assert ran == {1: Execution.MASKED, ANALYSIS_BATCH: Execution.SPARSE}
    assert answers["image"].execution == "masked" and answers["job"].execution == "sparse"
    assert module.execution is Execution.SPARSE  # the module's attribute was never set


def test_answers_report_the_execution_that_ran_and_numbers_do_not_change():
    masked = loaded_with_plan({1: Execution.MASKED, ANALYSIS_BATCH: Execution.MASKED})
    sparse = loaded_with_plan({1: Execution.SPARSE, ANALYSIS_BATCH: Execution.SPARSE})
    image = Image.new("L", (28, 28), 0)
    for y in range(6, 22):
        for x in range(9, 19):
            image.putpixel((x, y), 220)
    a, b = ps.analyze_image(masked, image), ps.analyze_image(sparse, image)
    assert (a.execution, b.execution) == ("masked", "sparse")
    assert a.prediction[0].probability == pytest.approx(b.prediction[0].probability, abs=1e-5)
    assert a.flops.ratio == b.flops.ratio
    # the planned module workloads read (studies, the corpus job, analyze) runs the plan too
    batch = torch.zeros(ANALYSIS_BATCH, 1, 28, 28)
    assert masked.planned().trace(batch).execution == "masked" and sparse.planned().trace(batch[:1]).execution == "sparse"


def test_ps_load_plans_and_caches_in_its_folder(tmp_path, monkeypatch):
    monkeypatch.setenv("PONDERSCOPE_CACHE", str(tmp_path / "env"))
    fake_timer(monkeypatch, {1: Execution.MASKED, ANALYSIS_BATCH: Execution.SPARSE})
    model = ps.load("fmnist_sact_resnet32")  # auto, the default
    assert model.execution == "masked" and model.execution_for(250) is Execution.SPARSE
    assert model.summary()["execution"]["plan"] == {"1": "masked", str(ANALYSIS_BATCH): "sparse"}
    assert len(list((tmp_path / "env" / "execution-plans").glob("*.json"))) == 1
    plans.forget_plans()
    ps.load("fmnist_sact_resnet32", cache_dir=tmp_path / "own")
    assert len(list((tmp_path / "own" / "execution-plans").glob("*.json"))) == 1
    no_timing(monkeypatch)
    fixed = ps.load("fmnist_sact_resnet32", execution="masked")
    assert fixed.execution_for(1) is fixed.execution_for(250) is Execution.MASKED
    assert fixed.summary()["execution"]["mode"] == "masked"
    with pytest.raises(ValueError, match="execution must be one of auto, sparse, masked, not 'fastest'"):
        ps.load("fmnist_sact_resnet32", execution="fastest")


# ------------------------------------------------------------------------------ command line


@pytest.mark.parametrize("command", [["serve"], ["analyze", "fmnist_sact_resnet32", "--out", "x"], ["study", "sweep", "m", "--out", "x.html"],
                                     ["render", "fmnist_sact_resnet32", "0", "--out", "x.html"]])
def test_the_commands_refuse_an_unknown_execution(command, capsys):
    from ponderscope.cli import main

    with pytest.raises(SystemExit) as error:
        main(command + ["--execution", "fast"])
    assert error.value.code == 2
    assert "argument --execution: invalid choice: 'fast' (choose from auto, sparse, masked)" in capsys.readouterr().err.replace("'auto', 'sparse', 'masked'", "auto, sparse, masked")


def test_the_commands_pass_the_execution_on(monkeypatch, tmp_path):
    from ponderscope import analyze, notebook
    from ponderscope.cli import main
    from ponderscope.server import app

    got = {}
    monkeypatch.setattr(app, "run", lambda **kwargs: got.setdefault("serve", kwargs["execution"]))
    main(["serve"])
    assert got.pop("serve") == "auto"
    main(["serve", "--execution", "masked"])
    assert got.pop("serve") == "masked"

    def fake_analyze(*args, **kwargs):
        got["analyze"] = kwargs["execution"]

    monkeypatch.setattr(analyze, "analyze", fake_analyze)
    main(["analyze", "fmnist_sact_resnet32", "--out", str(tmp_path / "a"), "--execution", "sparse"])
    assert got.pop("analyze") == "sparse"

    def fake_load(name, device="cpu", execution="auto", **kwargs):
        got["load"] = execution
        raise ValueError("stop here")

    monkeypatch.setattr(notebook, "load", fake_load)
    with pytest.raises(SystemExit, match="stop here"):
        main(["study", "sweep", "fmnist_sact_resnet32", "--out", str(tmp_path / "s.html"), "--execution", "masked"])
    assert got.pop("load") == "masked"
    with pytest.raises(SystemExit, match="stop here"):
        main(["study", "lesion", "fmnist_sact_resnet32", "--out", str(tmp_path / "s.html")])
    assert got.pop("load") == "auto"


def test_analyze_refuses_an_unknown_execution_in_a_sentence(tmp_path):
    from ponderscope.analyze import analyze

    with pytest.raises(ValueError, match="execution must be one of auto, sparse, masked, not 'quick'"):
        analyze("fmnist_sact_resnet32", str(tmp_path / "out"), execution="quick", device="cpu")


def test_a_plan_is_timed_on_the_models_test_images_where_it_has_them(tmp_path, monkeypatch):
    """What a data-dependent model skips depends on what it sees (the early-exit ResNet leaves at
    its first exit on most test images, on hardly any synthetic picture): LoadedModel plans on the
    model's own test images, batch 1 on a different image each round, and says so; a model whose
    images cannot be read is timed on synthetic inputs, under another cache key."""
    from ponderscope.core.loaded import load_model

    seen = []

    def time_pass(module, x, execution):
        seen.append((x.shape[0], x.clone()))
        return 1.0 if execution is Execution.SPARSE else 2.0

    monkeypatch.setattr(plans, "time_pass", time_pass)
    loaded = load_model(CHECKPOINTS / "fmnist_early_exit_resnet32", "ee", "cpu", plan_cache=tmp_path)
    expected = plans.test_images(loaded.card)
    assert expected is not None and expected.shape[0] == ANALYSIS_BATCH
    singles = [x for batch, x in seen if batch == 1]
    for x in singles:  # each one of the first test images, as normalised for the model
        assert any(torch.equal(x[0], expected[i]) for i in range(plans.BATCH_1_IMAGES))
    assert len({x.sum().item() for x in singles}) == min(plans.ROUNDS[1], plans.BATCH_1_IMAGES)  # a different image each round
    assert all(torch.equal(x, expected) for batch, x in seen if batch == ANALYSIS_BATCH)
    plan = loaded.execution_plan
    assert "on its test images" in plan.note and plan.choices[1] is Execution.SPARSE
    (stored,) = (tmp_path / "execution-plans").glob("*.json")
    assert json.loads(stored.read_text())["key"]["inputs"] == "test images"

    # offered but unreadable (its data not installed): synthetic inputs, said in the note
    plans.forget_plans()
    seen.clear()
    model = models.load_checkpoint(CHECKPOINTS / "fmnist_early_exit_resnet32")
    plan = plan_execution(model, model.card, "cpu", SHA, "auto", tmp_path, images=lambda: None)
    assert "on synthetic inputs" in plan.note
    synthetic = plans.synthetic_input(model.card, 1)
    assert all(torch.equal(x, synthetic) for batch, x in seen if batch == 1)
    stored = {json.loads(f.read_text())["key"]["weights_sha256"]: json.loads(f.read_text()) for f in (tmp_path / "execution-plans").glob("*.json")}
    assert stored[SHA]["key"]["inputs"] == stored[SHA]["inputs"] == "synthetic"  # never filed as timed on images

    # a test set the server may not read (ModelStore.refused_data_source): not offered, not read
    plans.forget_plans()
    import ponderscope.core.loaded as loaded_module

    monkeypatch.setattr(loaded_module, "test_images", lambda card, count=ANALYSIS_BATCH: pytest.fail("a refused test set was read"))
    refused = load_model(CHECKPOINTS / "fmnist_early_exit_resnet32", "ee2", "cpu", refuse=lambda card: "outside --data-root",
                         plan_cache=tmp_path / "other")
    assert refused.no_test_set == "outside --data-root" and "on synthetic inputs" in refused.execution_plan.note
