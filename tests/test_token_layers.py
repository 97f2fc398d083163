"""The byte LMs that decide per byte and layer (issue 25 item 1): the Universal Transformer + ACT
(models/universal_transformer.py) and Mixture-of-Depths (models/mixture_of_depths.py), and their
dense twins, checked on values with small models (dim 32, 2 heads, context 16):

* sparse execution gives the masked (reference) execution's numbers: logits, ponder, steps,
  token_layers, token_layer_weights, FLOPs, and gradients, at batch 1 and 3, on texts of several
  windows and a shorter rest, with and without autograd, in eval and training mode;
* the numbers are those of an independent implementation written here (the layer's attention and
  MLP by hand in float64, the ACT rule per byte in plain Python, top-k and the predictor's routing),
  and agree with models/halting.act_weights;
* causality: byte t + k changes nothing at positions <= t (ut_act, mod with its predictor), nor,
  in a batch of 3, anything of the other texts, while mod's top-k routing (training's rule) does
  look ahead;
* FLOPs equal a count of multiply-adds written here from the tokens each layer ran;
* the dense twins (ut, transformer_lm / capacity 1) run every byte through every layer and cost the
  adaptive model's dense_flops; a checkpoint round trip reproduces the trace.
"""
from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from ponderscope.models import create_model, load_checkpoint, save_checkpoint
from ponderscope.models.halting import DEFAULT_EPS, act_weights
from ponderscope.models.sparse import executing

DIM, HEADS, CONTEXT, MLP_RATIO = 32, 2, 16, 4.0
HIDDEN = int(DIM * MLP_RATIO)
STEPS, DEPTH = 5, 4
LENGTH = 3 * CONTEXT + 5  # three windows of 16 bytes and a rest of 5
BYTE_LM_CARD = {"task": {"name": "bytes-lm"}, "dataset": "jargon"}


def text(batch: int, length: int = LENGTH, seed: int = 1) -> torch.Tensor:
    return torch.randint(0, 256, (batch, length), generator=torch.Generator().manual_seed(seed))


def small_ut_act(seed: int = 0):
    """A random ut_act whose bytes halt after 1 to 5 steps: the halting unit's weights scaled up
    (a fresh one says h ~ sigmoid(bias) for every byte), so the halting pattern varies along the text."""
    torch.manual_seed(seed)
    model = create_model("ut_act", dim=DIM, heads=HEADS, mlp_ratio=MLP_RATIO, max_steps=STEPS, context=CONTEXT, halting_bias=2.0)
    with torch.no_grad():
        model.halting_unit.weight.mul_(20.0)
    return model.eval()


def small_mod(seed: int = 0, routing: str = "predictor", capacity: float = 0.25):
    """A random mod whose predictors route some bytes and not others (their output bias moved to
    the median of their logits on a random text)."""
    torch.manual_seed(seed)
    model = create_model("mod", dim=DIM, heads=HEADS, mlp_ratio=MLP_RATIO, depth=DEPTH, context=CONTEXT, capacity=capacity, routing=routing)
    with torch.no_grad():
        for predictor in model.predictors.values():
            predictor[-1].weight.mul_(10.0)
        x = text(4, seed=99)
        state = model.embedding(x[:, :CONTEXT]) + model.position
        for index, layer in enumerate(model.layers):
            if model.routed[index]:
                predictor = model.predictors[str(index)]
                predictor[-1].bias.sub_(predictor(state).median())
            state = state + layer.masked_update(state)  # roughly the next layer's input
    return model.eval()


MODELS = {"ut_act": small_ut_act, "mod": small_mod, "mod top-k": lambda: small_mod(routing="top-k")}


def trace_in(model, x, execution: str):
    with executing(execution):
        return model.trace(x)


def assert_same_trace(a, b, atol: float = 1e-5):
    torch.testing.assert_close(a.logits, b.logits, atol=atol, rtol=1e-5)
    assert torch.equal(a.token_layers, b.token_layers)
    assert torch.equal(a.steps, b.steps)
    torch.testing.assert_close(a.ponder, b.ponder, atol=1e-6, rtol=0)
    if a.token_layer_weights is None:
        assert b.token_layer_weights is None
    else:
        torch.testing.assert_close(a.token_layer_weights, b.token_layer_weights, atol=1e-6, rtol=0)
    assert torch.equal(a.flops, b.flops)
    assert a.dense_flops == b.dense_flops


def check_set_up(model, trace):
    """The examples must exercise what they test: bytes that run different numbers of layers."""
    ran = trace.token_layers.flatten(0, 1).float()  # [bytes, L]
    assert len(trace.steps.unique()) >= 2, "test set-up: the steps must vary"
    assert any(0 < rate < 1 for rate in ran.mean(0).tolist()), "test set-up: some layer must run some bytes and skip others"


# ----------------------------------------------------------------------------- sparse == masked


@pytest.mark.parametrize("batch", [1, 3])
@pytest.mark.parametrize("name", list(MODELS))
def test_sparse_equals_masked_without_grad(name, batch):
    model = MODELS[name]()
    x = text(batch)
    with torch.no_grad():
        sparse, masked = trace_in(model, x, "sparse"), trace_in(model, x, "masked")
    check_set_up(model, sparse)
    assert sparse.logits.shape == (batch, LENGTH, 256) and sparse.token_layers.shape[:2] == (batch, LENGTH)
    assert sparse.flops.shape == (batch,)
    assert_same_trace(sparse, masked)


def loss_and_grads(model, x, execution):
    model.zero_grad()
    trace = trace_in(model, x, execution)
    loss = F.cross_entropy(trace.logits[:, :-1].reshape(-1, 256), x[:, 1:].reshape(-1)) + model.adaptive_loss(trace)
    loss.backward()
    return trace, loss.detach(), {name: p.grad.clone() for name, p in model.named_parameters() if p.grad is not None}


@pytest.mark.parametrize("batch", [1, 3])
@pytest.mark.parametrize("training", [False, True], ids=["eval", "train"])
@pytest.mark.parametrize("name", ["ut_act", "mod"])
def test_sparse_equals_masked_with_grad(name, training, batch):
    """With autograd on (and in training mode: mod then routes by top-k), the traces and every
    parameter's gradient agree."""
    model = MODELS[name]().train(training)
    x = text(batch)
    sparse, sparse_loss, sparse_grads = loss_and_grads(model, x, "sparse")
    masked, masked_loss, masked_grads = loss_and_grads(model, x, "masked")
    check_set_up(model, sparse)
    assert_same_trace(sparse, masked)
    torch.testing.assert_close(sparse_loss, masked_loss, atol=1e-6, rtol=1e-6)
    assert sparse_grads.keys() == masked_grads.keys()
    assert "layer.q.weight" in sparse_grads or "layers.1.q.weight" in sparse_grads
    for key in sparse_grads:
        torch.testing.assert_close(sparse_grads[key], masked_grads[key], atol=1e-6, rtol=1e-4, msg=key)
    if name == "mod":
        assert (routers := [k for k in sparse_grads if k.startswith("routers.")]) and all(sparse_grads[k].abs().sum() > 0 for k in routers)
        if training:  # top-k: exactly k = capacity x n bytes of each window through each routed layer
            ran = sparse.token_layers
            assert torch.equal(ran[:, : 3 * CONTEXT, 1].reshape(-1, CONTEXT).sum(1), torch.full((3 * batch,), 4))
            assert torch.equal(ran[:, 3 * CONTEXT :, 1].sum(1), torch.full((batch,), 1))  # round(0.25 x 5)
            assert {"predictor_logits", "router_targets"} <= set(sparse.extras)
            assert model.adaptive_loss(sparse) > 0


@pytest.mark.parametrize("name", list(MODELS))
def test_a_text_alone_or_in_a_batch_and_window_by_window(name):
    """Windows are read from scratch: a text's trace is that of its windows one by one, and does
    not depend on the other texts of its batch (FLOPs included)."""
    model = MODELS[name]()
    x = text(3)
    with torch.no_grad():
        both = model.trace(x)
        for b in range(3):
            alone = model.trace(x[b : b + 1])
            torch.testing.assert_close(alone.logits[0], both.logits[b], atol=1e-5, rtol=1e-5)
            assert torch.equal(alone.token_layers[0], both.token_layers[b])
            assert float(alone.flops) == float(both.flops[b])
            windows = [model.trace(x[b : b + 1, s : s + CONTEXT]) for s in range(0, LENGTH, CONTEXT)]
            torch.testing.assert_close(torch.cat([w.logits for w in windows], 1), alone.logits, atol=1e-5, rtol=1e-5)
            assert torch.equal(torch.cat([w.token_layers for w in windows], 1), alone.token_layers)
            assert sum(float(w.flops) for w in windows) == float(alone.flops)
            assert sum(w.dense_flops for w in windows) == alone.dense_flops


# ----------------------------------------------------------------------------- an independent implementation


def weights_of(model) -> dict:
    return {k: v.detach().double() for k, v in model.state_dict().items()}


def layer_norm(x, w, prefix):
    return F.layer_norm(x, x.shape[-1:], w[prefix + ".weight"], w[prefix + ".bias"], 1e-5)


def linear(x, w, prefix):
    return x @ w[prefix + ".weight"].T + w[prefix + ".bias"]


def layer_update(w, prefix, x, queries, keys):
    """The pre-norm layer's update u_t = y_t - x_t for the query positions of one window x [n, d]
    (float64), attending to the key positions s <= t; zeros elsewhere. One position at a time."""
    n, d = x.shape
    head = d // HEADS
    h = layer_norm(x, w, prefix + ".norm1")
    q = linear(h, w, prefix + ".q")
    k, v = linear(h, w, prefix + ".kv").split(d, -1)
    update = torch.zeros_like(x)
    for t in range(n):
        if not queries[t]:
            continue
        seen = [s for s in range(t + 1) if keys[s]]
        heads = []
        for i in range(HEADS):
            part = slice(i * head, (i + 1) * head)
            scores = torch.stack([q[t, part] @ k[s, part] for s in seen]) / math.sqrt(head)
            p = torch.exp(scores - scores.max())
            p = p / p.sum()
            heads.append(sum(p[j] * v[s, part] for j, s in enumerate(seen)))
        a = x[t] + linear(torch.cat(heads), w, prefix + ".out")
        m = linear(F.gelu(linear(layer_norm(a, w, prefix + ".norm2"), w, prefix + ".mlp.0")), w, prefix + ".mlp.2")
        update[t] = a + m - x[t]
    return update


def ut_act_by_hand(model, window: list[int]) -> dict:
    """Universal Transformer + ACT on one window, per its docstring: the ACT rule applied byte by
    byte in plain Python; a halted byte keeps its state and is still read (a key)."""
    w = weights_of(model)
    n, threshold = len(window), 1.0 - model.eps
    state = w["embedding.weight"][window] + w["position"][:n]
    running, total = [True] * n, [0.0] * n
    ran = [[False] * STEPS for _ in range(n)]
    weight = [[0.0] * STEPS for _ in range(n)]
    halting = [[0.0] * STEPS for _ in range(n)]  # h per step (1 at the last), for act_weights
    remainder = [0.0] * n
    output = torch.zeros_like(state)
    for step in range(STEPS):
        if not any(running):
            break
        inputs = state + w["step_embedding"][step]
        update = layer_update(w, "layer", inputs, running, [True] * n)
        state = torch.stack([inputs[t] + update[t] if running[t] else state[t] for t in range(n)])
        last = step == STEPS - 1
        h = torch.sigmoid(linear(layer_norm(state, w, "halting_norm"), w, "halting_unit")).squeeze(-1).tolist()
        for t in range(n):
            if not running[t]:
                continue
            ran[t][step] = True
            h_t = 1.0 if last else h[t]
            halting[t][step] = h_t
            if last or total[t] + h_t >= threshold:
                weight[t][step] = remainder[t] = 1.0 - total[t]
                running[t] = False
            else:
                weight[t][step] = h_t
            total[t] += h_t
            output[t] += weight[t][step] * state[t]
    steps = [sum(r) for r in ran]
    logits = linear(layer_norm(output, w, "norm"), w, "head")
    return {"logits": logits, "ran": torch.tensor(ran), "weights": torch.tensor(weight, dtype=torch.float64), "steps": torch.tensor(steps),
            "ponder": torch.tensor([s + r for s, r in zip(steps, remainder)], dtype=torch.float64), "halting": torch.tensor(halting, dtype=torch.float64)}


def mod_by_hand(model, window: list[int]) -> dict:
    """Mixture-of-Depths on one window, per its docstring: in a routed layer the bytes whose
    predictor logit is > 0 (or, top-k, the k highest router scores) attend to each other only and
    add sigmoid(router) x their update; the others pass by."""
    w = weights_of(model)
    n = len(window)
    state = w["embedding.weight"][window] + w["position"][:n]
    ran, weights = [], []
    for index in range(DEPTH):
        prefix = f"layers.{index}"
        if not model.routed[index]:
            state = state + layer_update(w, prefix, state, [True] * n, [True] * n)
            ran.append([True] * n)
            weights.append([1.0] * n)
            continue
        score = linear(state, w, f"routers.{index}").squeeze(-1)
        if model.routing == "top-k" or model.training:
            k = max(1, round(model.capacity * n))
            cut = sorted(score.tolist(), reverse=True)[k - 1]
            routed = [s >= cut for s in score.tolist()]
        else:
            hidden = F.gelu(linear(state, w, f"predictors.{index}.0"))
            routed = [p > 0 for p in linear(hidden, w, f"predictors.{index}.2").squeeze(-1).tolist()]
        gate = torch.sigmoid(score)
        update = layer_update(w, prefix, state, routed, routed)
        state = state + torch.tensor(routed, dtype=torch.float64).unsqueeze(-1) * gate.unsqueeze(-1) * update
        ran.append(routed)
        weights.append([g if r else 0.0 for g, r in zip(gate.tolist(), routed)])
    logits = linear(layer_norm(state, w, "norm"), w, "head")
    ran = torch.tensor(ran).T
    return {"logits": logits, "ran": ran, "weights": torch.tensor(weights, dtype=torch.float64).T, "steps": ran.sum(1)}


def windows_of(length: int):
    return [(start, min(start + CONTEXT, length)) for start in range(0, length, CONTEXT)]


@pytest.mark.parametrize("execution", ["sparse", "masked"])
def test_ut_act_is_the_act_rule_by_hand(execution):
    model = small_ut_act()
    x = text(2)
    with torch.no_grad():
        trace = trace_in(model, x, execution)
    check_set_up(model, trace)
    assert trace.token_layers.dtype == torch.bool and trace.token_layers.shape == (2, LENGTH, STEPS)
    # The ACT rule, read off the trace alone: the weights of a byte sum to 1, it ran steps 1..N,
    # N + R with R the weight of its last step.
    ran, p = trace.token_layers, trace.token_layer_weights
    torch.testing.assert_close(p.sum(-1), torch.ones(2, LENGTH), atol=1e-6, rtol=0)
    assert torch.equal(trace.steps, ran.sum(-1))
    assert torch.equal(ran, torch.arange(STEPS) < trace.steps.unsqueeze(-1))  # 1..N, no gaps
    assert bool((p[~ran] == 0).all()) and bool((p[ran] > 0).all())
    last_weight = p.gather(-1, (trace.steps - 1).unsqueeze(-1)).squeeze(-1)
    torch.testing.assert_close(trace.ponder, trace.steps + last_weight, atol=1e-6, rtol=0)
    assert bool(((trace.ponder - trace.steps > 0) & (trace.ponder - trace.steps <= 1 + 1e-6)).all())
    # ... and the numbers of an implementation written here, window by window.
    for b in range(2):
        for start, end in windows_of(LENGTH):
            expected = ut_act_by_hand(model, x[b, start:end].tolist())
            assert torch.equal(trace.token_layers[b, start:end], expected["ran"])
            assert torch.equal(trace.steps[b, start:end], expected["steps"])
            torch.testing.assert_close(trace.token_layer_weights[b, start:end].double(), expected["weights"], atol=1e-5, rtol=0)
            torch.testing.assert_close(trace.ponder[b, start:end].double(), expected["ponder"], atol=1e-5, rtol=0)
            torch.testing.assert_close(trace.logits[b, start:end].double(), expected["logits"], atol=1e-4, rtol=1e-4)
            # models/halting.act_weights on the h of the steps each byte ran gives the same rule
            rule = act_weights(expected["halting"], eps=DEFAULT_EPS)
            assert torch.equal(rule.steps, expected["steps"])
            torch.testing.assert_close(rule.weights, expected["weights"], atol=1e-9, rtol=0)
            torch.testing.assert_close(rule.ponder_cost, expected["ponder"], atol=1e-9, rtol=0)


@pytest.mark.parametrize("training", [False, True], ids=["eval", "train"])
@pytest.mark.parametrize("routing", ["predictor", "top-k"])
@pytest.mark.parametrize("execution", ["sparse", "masked"])
def test_mod_is_its_routing_by_hand(execution, routing, training):
    model = small_mod(routing=routing).train(training)
    x = text(2)
    with torch.no_grad():
        trace = trace_in(model, x, execution)
    check_set_up(model, trace)
    assert trace.token_layers.shape == (2, LENGTH, DEPTH)
    assert bool(trace.token_layers[..., ::2].all())  # the 1st and 3rd layers are not routed
    assert torch.equal(trace.steps, trace.token_layers.sum(-1)) and torch.equal(trace.ponder, trace.steps.float())
    for b in range(2):
        for start, end in windows_of(LENGTH):
            expected = mod_by_hand(model, x[b, start:end].tolist())
            assert torch.equal(trace.token_layers[b, start:end], expected["ran"])
            torch.testing.assert_close(trace.token_layer_weights[b, start:end].double(), expected["weights"], atol=1e-6, rtol=0)
            torch.testing.assert_close(trace.logits[b, start:end].double(), expected["logits"], atol=1e-4, rtol=1e-4)


# ----------------------------------------------------------------------------- causality


@pytest.mark.parametrize("execution", ["sparse", "masked"])
@pytest.mark.parametrize("name", ["ut_act", "mod"])
def test_later_bytes_change_nothing_before_them(name, execution):
    """ut_act, and mod with its predictor (the routing of evaluation and the dashboard): with byte
    t + k changed, positions <= t keep their logits, layers and weights; position t + k changes."""
    model = MODELS[name]()
    x = text(1)
    generator = torch.Generator().manual_seed(5)
    with torch.no_grad():
        base = trace_in(model, x, execution)
        changed_after = 0
        for t, k in [(0, 1), (3, 1), (7, 5), (CONTEXT - 2, 1), (CONTEXT + 4, 3), (2 * CONTEXT + 10, 5), (3 * CONTEXT, 2)]:
            y = x.clone()
            y[0, t + k] = (int(x[0, t + k]) + 1 + int(torch.randint(0, 255, (1,), generator=generator))) % 256
            other = trace_in(model, y, execution)
            torch.testing.assert_close(other.logits[:, : t + 1], base.logits[:, : t + 1], atol=1e-6, rtol=0)
            assert torch.equal(other.token_layers[:, : t + 1], base.token_layers[:, : t + 1])
            torch.testing.assert_close(other.token_layer_weights[:, : t + 1], base.token_layer_weights[:, : t + 1], atol=1e-7, rtol=0)
            assert not torch.allclose(other.logits[:, t + k], base.logits[:, t + k])
            changed_after += not torch.allclose(other.logits[:, t + k :], base.logits[:, t + k :])
    assert changed_after == 7


@pytest.mark.parametrize("execution", ["sparse", "masked"])
@pytest.mark.parametrize("name", ["ut_act", "mod"])
def test_a_later_byte_of_one_text_in_a_batch_changes_nothing_before_it_nor_the_other_texts(name, execution):
    """Batch 3 (sparse execution gathers the bytes of all texts that run a layer): byte t + 1 of
    text 1 changed, text 1 keeps its logits, layers and weights at positions <= t, and texts 0 and
    2 keep theirs everywhere; text 1 changes at t + 1."""
    model = MODELS[name]()
    x = text(3)
    generator = torch.Generator().manual_seed(7)
    with torch.no_grad():
        base = trace_in(model, x, execution)
        check_set_up(model, base)
        for t in [0, 5, CONTEXT - 1, CONTEXT + 6, 2 * CONTEXT + 3, LENGTH - 2]:
            y = x.clone()
            y[1, t + 1] = (int(x[1, t + 1]) + 1 + int(torch.randint(0, 255, (1,), generator=generator))) % 256
            other = trace_in(model, y, execution)
            for index, keep in ((0, slice(None)), (1, slice(0, t + 1)), (2, slice(None))):
                where = f"{name} {execution}: byte {t + 1} of text 1 changed, text {index}"
                torch.testing.assert_close(other.logits[index, keep], base.logits[index, keep], atol=1e-5, rtol=0, msg=where)
                assert torch.equal(other.token_layers[index, keep], base.token_layers[index, keep]), where
                torch.testing.assert_close(other.token_layer_weights[index, keep], base.token_layer_weights[index, keep], atol=1e-6, rtol=0, msg=where)
                torch.testing.assert_close(other.ponder[index, keep], base.ponder[index, keep], atol=1e-6, rtol=0, msg=where)
                assert torch.equal(other.steps[index, keep], base.steps[index, keep]), where
            assert not torch.allclose(other.logits[1, t + 1], base.logits[1, t + 1])


@pytest.mark.parametrize("training", [False, True], ids=["eval top-k", "train"])
def test_top_k_routing_looks_ahead(training):
    """Top-k (training's rule, or routing="top-k") ranks a byte among its whole window: changing
    the window's last byte changes earlier bytes' layers (and so their logits) in some tries."""
    model = small_mod(routing="top-k").train(training)
    x = text(1, CONTEXT)
    generator = torch.Generator().manual_seed(3)
    looked_ahead = 0
    with torch.no_grad():
        base = model.trace(x)
        for _ in range(20):
            y = x.clone()
            y[0, -1] = int(torch.randint(0, 256, (1,), generator=generator))
            other = model.trace(y)
            if not torch.equal(other.token_layers[:, :-1], base.token_layers[:, :-1]):
                looked_ahead += 1
                assert not torch.allclose(other.logits[:, :-1], base.logits[:, :-1], atol=1e-6)
    assert looked_ahead >= 1


# ----------------------------------------------------------------------------- FLOPs


def layer_macs(queries: list[bool], keys: list[bool]) -> int:
    """Multiply-adds of one layer on one window: k and v of each key token (2 d^2), q, W_o and the
    MLP of each query token (2 d^2 + 2 d m), q.k and the weighted sum of v per (query, visible key)
    pair (2 d)."""
    pairs = sum(sum(keys[: t + 1]) for t in range(len(queries)) if queries[t])
    return sum(keys) * 2 * DIM * DIM + sum(queries) * (2 * DIM * DIM + 2 * DIM * HIDDEN) + pairs * 2 * DIM


def readout_macs(n: int) -> int:
    return n * DIM * 256


def ut_act_macs(ran: torch.Tensor) -> int:
    """One window's token_layers [n, M]: each step some byte runs reads every byte as a key; the
    halting unit (d) for each running byte at every step but the last."""
    n = ran.shape[0]
    total = readout_macs(n)
    for step in range(STEPS):
        queries = ran[:, step].tolist()
        if any(queries):
            total += layer_macs(queries, [True] * n) + (sum(queries) * DIM if step < STEPS - 1 else 0)
    return total


def mod_macs(ran: torch.Tensor, model) -> int:
    """One window's token_layers [n, depth]: routed bytes are a routed layer's queries and keys;
    per byte and routed layer the router (d), and the predictor's MLP where it runs: at evaluation
    with predictor routing, and while training (it learns the top-k choice)."""
    n = ran.shape[0]
    predictor = DIM * (DIM // 4) + DIM // 4 if (model.routing == "predictor" or model.training) else 0
    total = readout_macs(n)
    for index in range(DEPTH):
        routed = ran[:, index].tolist()
        total += layer_macs(routed, routed) + (n * (DIM + predictor) if model.routed[index] else 0)
    return total


def dense_macs(layers: int, length: int) -> int:
    return sum(layers * layer_macs([True] * (e - s), [True] * (e - s)) + readout_macs(e - s) for s, e in windows_of(length))


@pytest.mark.parametrize("training", [False, True], ids=["eval", "train"])
@pytest.mark.parametrize("name", list(MODELS))
def test_flops_are_the_multiply_adds_counted_by_hand(name, training):
    model = MODELS[name]().train(training)
    x = text(3)
    count = ut_act_macs if name == "ut_act" else (lambda ran: mod_macs(ran, model))
    with torch.no_grad():
        traces = [trace_in(model, x, execution) for execution in ("sparse", "masked")]
    for trace in traces:
        expected = [2 * sum(count(trace.token_layers[b, s:e]) for s, e in windows_of(LENGTH)) for b in range(3)]
        assert trace.flops.tolist() == expected
        assert trace.dense_flops == 2 * dense_macs(STEPS if name == "ut_act" else DEPTH, LENGTH)
        assert bool((trace.flops < trace.dense_flops).all())


def test_ut_act_flops_of_a_window_that_halted_first():
    """A window whose bytes have all halted while another window of the batch still runs is not
    charged for the steps it does not take (its keys), so it costs what it costs alone."""
    model = small_ut_act()
    x = text(3)
    with torch.no_grad():
        trace = model.trace(x)
    most = trace.token_layers[:, : 3 * CONTEXT].reshape(9, CONTEXT, STEPS).any(1).sum(-1)  # steps per full window
    assert len(most.unique()) >= 2, "test set-up: windows must stop after different numbers of steps"
    for b in range(3):
        assert float(trace.flops[b]) == 2 * sum(ut_act_macs(trace.token_layers[b, s:e]) for s, e in windows_of(LENGTH))


# ----------------------------------------------------------------------------- dense twins


def test_ut_is_ut_act_without_halting():
    """ut (the dense twin) on ut_act's weights runs every byte max_steps times; it costs ut_act's
    dense_flops; and ut_act whose halting unit never fires (h ~ 0) gives ut's logits: its weights
    are then all on the last step."""
    adaptive = small_ut_act()
    dense = create_model("ut", dim=DIM, heads=HEADS, mlp_ratio=MLP_RATIO, max_steps=STEPS, context=CONTEXT).eval()
    missing, unexpected = dense.load_state_dict(adaptive.state_dict(), strict=False)
    assert not missing and sorted(unexpected) == ["halting_norm.bias", "halting_norm.weight", "halting_unit.bias", "halting_unit.weight"]
    assert not dense.has_sparse_path and adaptive.has_sparse_path
    x = text(2)
    with torch.no_grad():
        twin, trace = dense.trace(x), adaptive.trace(x)
        assert torch.equal(twin.steps, torch.full((2, LENGTH), STEPS)) and bool(twin.token_layers.all())
        assert twin.token_layers.shape == (2, LENGTH, STEPS) and torch.equal(twin.ponder, twin.steps.float())
        assert twin.flops.tolist() == [trace.dense_flops] * 2 == [twin.dense_flops] * 2
        assert twin.dense_flops == 2 * dense_macs(STEPS, LENGTH)
        adaptive.halting_unit.weight.zero_()
        adaptive.halting_unit.bias.fill_(-40.0)  # h = sigmoid(-40) for every byte and step
        never = adaptive.trace(x)
    assert bool(never.token_layers.all())
    torch.testing.assert_close(never.token_layer_weights[..., -1], torch.ones(2, LENGTH))
    torch.testing.assert_close(never.logits, twin.logits, atol=1e-5, rtol=1e-5)
    for b in range(2):
        for s, e in windows_of(LENGTH)[::3]:
            window = x[b, s:e].tolist()
            w = weights_of(dense)
            state = w["embedding.weight"][window] + w["position"][: e - s]
            for step in range(STEPS):
                state = state + w["step_embedding"][step]
                state = state + layer_update(w, "layer", state, [True] * (e - s), [True] * (e - s))
            torch.testing.assert_close(twin.logits[b, s:e].double(), linear(layer_norm(state, w, "norm"), w, "head"), atol=1e-4, rtol=1e-4)


def test_transformer_lm_is_mod_with_every_byte_through_every_layer():
    adaptive = small_mod()
    torch.manual_seed(0)
    dense = create_model("transformer_lm", dim=DIM, heads=HEADS, mlp_ratio=MLP_RATIO, depth=DEPTH, context=CONTEXT, capacity=0.25).eval()
    full = create_model("mod", dim=DIM, heads=HEADS, mlp_ratio=MLP_RATIO, depth=DEPTH, context=CONTEXT, capacity=1.0).eval()
    for twin in (dense, full):
        assert len(twin.routers) == 0 and len(twin.predictors) == 0 and not any(twin.routed) and not twin.has_sparse_path
        missing, unexpected = twin.load_state_dict(adaptive.state_dict(), strict=False)
        assert not missing and unexpected and all(k.startswith(("routers.", "predictors.")) for k in unexpected)
    x = text(2)
    with torch.no_grad():
        a, b, trace = dense.trace(x), full.trace(x), adaptive.trace(x)
    assert torch.equal(a.logits, b.logits)
    for twin in (a, b):
        assert bool(twin.token_layers.all()) and twin.token_layers.shape == (2, LENGTH, DEPTH)
        assert twin.token_layer_weights is None
        assert torch.equal(twin.steps, torch.full((2, LENGTH), DEPTH))
        assert twin.flops.tolist() == [trace.dense_flops] * 2 == [twin.dense_flops] * 2
    assert a.dense_flops == 2 * dense_macs(DEPTH, LENGTH)
    w = weights_of(dense)
    window = x[1, :CONTEXT].tolist()
    state = w["embedding.weight"][window] + w["position"]
    for index in range(DEPTH):
        state = state + layer_update(w, f"layers.{index}", state, [True] * CONTEXT, [True] * CONTEXT)
    torch.testing.assert_close(a.logits[1, :CONTEXT].double(), linear(layer_norm(state, w, "norm"), w, "head"), atol=1e-4, rtol=1e-4)


# ----------------------------------------------------------------------------- checkpoints


@pytest.mark.parametrize("name", ["ut_act", "mod top-k", "ut", "transformer_lm"])
def test_checkpoint_round_trip_reproduces_the_trace(tmp_path, name):
    if name in MODELS:
        model = MODELS[name]()
    else:
        torch.manual_seed(0)
        size = dict(max_steps=STEPS) if name == "ut" else dict(depth=DEPTH)
        model = create_model(name, dim=DIM, heads=HEADS, mlp_ratio=MLP_RATIO, context=CONTEXT, **size).eval()
    save_checkpoint(model, tmp_path / "ckpt", BYTE_LM_CARD)
    torch.manual_seed(123)  # another fresh init inside load_checkpoint
    loaded = load_checkpoint(tmp_path / "ckpt")
    assert type(loaded) is type(model) and loaded.registry_name == model.registry_name and not loaded.training
    assert loaded.card.task.name == "bytes-lm"
    for attribute in ("context", "max_steps", "act", "eps", "depth", "capacity", "routing", "routed"):
        assert getattr(loaded, attribute, None) == getattr(model, attribute, None), attribute
    x = text(2)
    with torch.no_grad():
        a, b = model.trace(x), loaded.trace(x)
    assert torch.equal(a.logits, b.logits) and torch.equal(a.token_layers, b.token_layers)
    assert torch.equal(a.steps, b.steps) and torch.equal(a.ponder, b.ponder) and torch.equal(a.flops, b.flops)
    assert (a.token_layer_weights is None) == (b.token_layer_weights is None)
    if a.token_layer_weights is not None:
        assert torch.equal(a.token_layer_weights, b.token_layer_weights)
