"""The ACT halting rule (models/halting.py) against the numbers in the papers (REFERENCE.md s1, s2)."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from ponderscope.models import StepwiseHalting, act_weights


def t(values, **kwargs):
    return torch.tensor(values, dtype=torch.float32, **kwargs)


def run_stepwise(h: torch.Tensor, eps: float = 0.01):
    """Feed h [..., n] to StepwiseHalting one step at a time, forcing a halt at the last step."""
    n = h.shape[-1]
    state = StepwiseHalting(h.shape[:-1], dtype=h.dtype, eps=eps)
    weights = [state.update(h[..., i], force_halt=i == n - 1) for i in range(n)]
    return torch.stack(weights, -1), state


# --------------------------------------------------------------------------- worked examples

def test_graves_worked_example():
    result = act_weights(t([0.1, 0.3, 0.4, 0.4]))
    assert result.steps.item() == 4
    assert result.remainder.item() == pytest.approx(0.2, abs=1e-6)
    torch.testing.assert_close(result.weights, t([0.1, 0.3, 0.4, 0.2]))
    assert result.ponder_cost.item() == pytest.approx(4.2, abs=1e-6)
    assert result.steps.dtype == torch.int64


def test_sact_official_test_case():
    h = t([0.01, 0.5, 0.5, 0.5, 0.5, 0.5])
    result = act_weights(h)
    assert result.steps.item() == 3
    assert result.ponder_cost.item() == pytest.approx(3.49, abs=1e-6)
    torch.testing.assert_close(result.weights, t([0.01, 0.50, 0.49, 0.0, 0.0, 0.0]))
    assert result.executed.tolist() == [True, True, True, False, False, False]


def test_constant_03_halts_at_step_4_not_3():
    # 0.3 + 0.3 + 0.3 = 0.9 < 0.99: a port that counts the current h twice stops at step 3.
    result = act_weights(torch.full((8,), 0.3))
    assert result.steps.item() == 4
    assert result.remainder.item() == pytest.approx(0.1, abs=1e-6)
    torch.testing.assert_close(result.weights, t([0.3, 0.3, 0.3, 0.1, 0, 0, 0, 0]))
    assert result.ponder_cost.item() == pytest.approx(4.1, abs=1e-6)
    _, state = run_stepwise(torch.full((8,), 0.3))
    assert state.steps.item() == 4


def test_first_step_can_halt_alone():
    # eps = 0.01: h^1 >= 0.99 halts after one update, R = 1 (nothing before), rho = 2.
    result = act_weights(t([0.995, 0.2, 0.2]))
    assert result.steps.item() == 1
    assert result.remainder.item() == pytest.approx(1.0)
    torch.testing.assert_close(result.weights, t([1.0, 0.0, 0.0]))
    assert result.ponder_cost.item() == pytest.approx(2.0)
    # ...but 0.98 does not.
    assert act_weights(t([0.98, 0.2, 0.2])).steps.item() == 2


def test_eps_changes_the_threshold():
    h = t([0.5, 0.45, 0.4])
    assert act_weights(h, eps=0.01).steps.item() == 3
    assert act_weights(h, eps=0.1).steps.item() == 2  # 0.95 >= 0.9


def test_last_step_halts_even_if_small():
    result = act_weights(t([0.1, 0.1, 0.1]))
    assert result.steps.item() == 3
    torch.testing.assert_close(result.weights, t([0.1, 0.1, 0.8]))
    assert result.ponder_cost.item() == pytest.approx(3.8, abs=1e-6)
    # The value given for the last step is ignored.
    torch.testing.assert_close(act_weights(t([0.1, 0.1, 0.0])).weights, t([0.1, 0.1, 0.8]))
    # A single step always halts with weight 1.
    single = act_weights(t([0.0]))
    assert single.steps.item() == 1 and single.weights.item() == 1.0 and single.ponder_cost.item() == 2.0


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_weights_sum_to_one_and_vanish_after_halting(seed):
    generator = torch.Generator().manual_seed(seed)
    h = torch.rand(64, 7, generator=generator) * 0.6
    result = act_weights(h)
    torch.testing.assert_close(result.weights.sum(-1), torch.ones(64))
    index = torch.arange(1, 8)
    after = index > result.steps[:, None]
    assert (result.weights[after] == 0).all()
    before = index < result.steps[:, None]
    torch.testing.assert_close(result.weights[before], h[before])
    assert ((result.steps >= 1) & (result.steps <= 7)).all()
    # R is in (0, 1], and rho = N + R.
    assert (result.remainder > 0).all() and (result.remainder <= 1).all()
    torch.testing.assert_close(result.ponder_cost, result.steps.float() + result.remainder)


def test_leading_batch_dims():
    h = torch.stack([t([0.1, 0.3, 0.4, 0.4]), t([0.01, 0.5, 0.5, 0.5]), t([0.995, 0.0, 0.0, 0.0])])  # [3, 4]
    h = h.expand(2, 3, 4).clone()  # [2, 3, 4]
    result = act_weights(h)
    assert result.weights.shape == (2, 3, 4)
    for field in (result.steps, result.remainder, result.ponder_cost):
        assert field.shape == (2, 3)
    assert result.steps.tolist() == [[4, 3, 1], [4, 3, 1]]
    torch.testing.assert_close(result.ponder_cost, t([[4.2, 3.49, 2.0], [4.2, 3.49, 2.0]]))
    assert result.executed.shape == (2, 3, 4)
    assert result.executed[0, 1].tolist() == [True, True, True, False]


# --------------------------------------------------------------------------- gradients

def test_ponder_gradient_is_minus_one_before_halting_and_zero_after():
    h = t([0.1, 0.3, 0.4, 0.4, 0.2], requires_grad=True)
    act_weights(h).ponder_cost.backward()
    torch.testing.assert_close(h.grad, t([-1.0, -1.0, -1.0, 0.0, 0.0]))


def test_remainder_carries_gradient():
    h = t([0.01, 0.5, 0.5, 0.5], requires_grad=True)
    result = act_weights(h)
    assert result.remainder.requires_grad
    result.remainder.backward()
    torch.testing.assert_close(h.grad, t([-1.0, -1.0, 0.0, 0.0]))


def test_weight_gradients():
    h = t([0.1, 0.3, 0.4, 0.4], requires_grad=True)
    result = act_weights(h)
    # sum_n c_n p^n with p = [h1, h2, h3, 1 - h1 - h2 - h3]: d/dh_n = c_n - c_4 for n < 4, 0 for n = 4.
    c = t([1.0, 2.0, 3.0, 5.0])
    (result.weights * c).sum().backward()
    torch.testing.assert_close(h.grad, t([-4.0, -3.0, -2.0, 0.0]))


def test_batched_gradient_per_element():
    h = torch.tensor([[0.1, 0.3, 0.4, 0.4], [0.995, 0.1, 0.1, 0.1]], requires_grad=True)
    act_weights(h).ponder_cost.sum().backward()
    torch.testing.assert_close(h.grad, t([[-1.0, -1.0, -1.0, 0.0], [0.0, 0.0, 0.0, 0.0]]))


def test_stepwise_gradient_matches():
    h = t([0.1, 0.3, 0.4, 0.4, 0.2], requires_grad=True)
    _, state = run_stepwise(h)
    state.ponder_cost.backward()
    torch.testing.assert_close(h.grad, t([-1.0, -1.0, -1.0, 0.0, 0.0]))


# --------------------------------------------------------------------------- stepwise == all at once

def assert_same(h: torch.Tensor, eps: float = 0.01):
    reference = act_weights(h, eps=eps)
    weights, state = run_stepwise(h, eps=eps)
    assert torch.equal(state.steps, reference.steps)
    torch.testing.assert_close(weights, reference.weights, atol=1e-6, rtol=0)
    torch.testing.assert_close(state.remainder, reference.remainder, atol=1e-6, rtol=0)
    torch.testing.assert_close(state.ponder_cost, reference.ponder_cost, atol=1e-6, rtol=0)
    assert not state.any_running()


@pytest.mark.parametrize("seed,shape,scale", [
    (0, (5,), 1.0), (1, (32, 4), 0.5), (2, (3, 4, 6), 0.4), (3, (2, 5, 5, 8), 0.3), (4, (100, 3), 1.0),
])
def test_stepwise_equals_act_weights_random(seed, shape, scale):
    generator = torch.Generator().manual_seed(seed)
    assert_same(torch.rand(shape, generator=generator) * scale)


def test_stepwise_equals_act_weights_other_eps():
    generator = torch.Generator().manual_seed(5)
    assert_same(torch.rand(50, 5, generator=generator) * 0.5, eps=0.1)


def test_stepwise_state_while_running():
    state = StepwiseHalting((2,))
    assert state.any_running()
    p1 = state.update(t([0.995, 0.3]))
    torch.testing.assert_close(p1, t([1.0, 0.3]))
    assert state.running.tolist() == [False, True]
    p2 = state.update(t([0.9, 0.3]))  # the first element has halted: weight 0, nothing counted
    torch.testing.assert_close(p2, t([0.0, 0.3]))
    assert state.steps.tolist() == [1, 2]
    p3 = state.update(t([0.9, 0.1]), force_halt=True)
    torch.testing.assert_close(p3, t([0.0, 0.4]))
    assert state.steps.tolist() == [1, 3]
    torch.testing.assert_close(state.ponder_cost, t([2.0, 3.4]))
    assert not state.any_running()


def test_near_threshold_stepwise_and_act_weights_agree():
    """The first two probabilities sum to within float32 rounding of 1 - eps. Whatever each side
    decides, both must decide the same thing, exactly one step must halt, weights sum to 1."""
    generator = torch.Generator().manual_seed(0)
    n_rows = 4000
    h = torch.rand(n_rows, 5, generator=generator)
    pair = h[:, :2] / h[:, :2].sum(-1, keepdim=True)
    h[:, :2] = pair * (0.99 + (torch.rand(n_rows, 1, generator=generator) - 0.5) * 2e-6)
    result = act_weights(h)
    # Self-consistency of the all-at-once form.
    torch.testing.assert_close(result.weights.sum(-1), torch.ones(n_rows), atol=1e-6, rtol=0)
    halting_step_weight = result.weights.gather(-1, (result.steps - 1)[:, None]).squeeze(-1)
    torch.testing.assert_close(halting_step_weight, result.remainder, atol=0, rtol=0)
    assert ((result.steps == 2) | (result.steps == 3)).all()
    assert (result.steps == 2).any() and (result.steps == 3).any()  # the test does straddle the threshold
    assert_same(h)


def run_scalar_rows(h: torch.Tensor, eps: float = 0.01):
    """The scalar form of StepwiseHalting on each row of h [rows, n] -> weights, steps, remainder, ponder."""
    weights, steps, remainders, ponders = [], [], [], []
    for row in h.tolist():
        state = StepwiseHalting.scalar(eps=eps)
        ws = []
        for n, value in enumerate(row, start=1):
            ws.append(state.update(np.float32(value), force_halt=n == len(row)))
        assert not state.any_running()
        weights.append(ws)
        steps.append(state.steps)
        remainders.append(state.remainder)
        ponders.append(state.ponder_cost)
        assert all(isinstance(v, np.float32) for v in (*ws, state.remainder, state.ponder_cost))
    return torch.tensor(np.array(weights)), torch.tensor(steps), torch.tensor(np.array(remainders)), torch.tensor(np.array(ponders))


@pytest.mark.parametrize("eps", [0.01, 0.1])
def test_scalar_form_equals_tensor_form_bit_for_bit(eps):
    """The batch-1 RNN path runs the same update on numpy float32 numbers: every weight, step
    count, remainder and ponder cost must be the tensor form's exactly, also where the running
    sum lands within rounding of 1 - eps."""
    generator = torch.Generator().manual_seed(7)
    h = torch.rand(600, 6, generator=generator) * 0.6
    near = h[:300, :2] / h[:300, :2].sum(-1, keepdim=True)
    h[:300, :2] = near * ((1 - eps) + (torch.rand(300, 1, generator=generator) - 0.5) * 2e-6)
    weights, state = run_stepwise(h, eps=eps)
    s_weights, s_steps, s_remainder, s_ponder = run_scalar_rows(h, eps=eps)
    assert torch.equal(s_steps, state.steps)
    assert torch.equal(s_weights, weights) and torch.equal(s_remainder, state.remainder)
    assert torch.equal(s_ponder, state.ponder_cost)
    assert (state.steps[:300] == 2).any() and (state.steps[:300] == 3).any()  # straddles the threshold


def test_zero_after_halt_is_the_same_rule_bit_for_bit():
    """The ResNet loop passes h = 0 wherever an element has halted and skips the masking of h and
    of the running sum there (`zero_after_halt`): the same weights, steps, remainders and ponder
    costs, exactly, also near the threshold; `rest` is 1 - the running sum before each step, and
    the running count follows `running`."""
    generator = torch.Generator().manual_seed(11)
    h = torch.rand(400, 6, generator=generator) * 0.6
    pair = h[:200, :2] / h[:200, :2].sum(-1, keepdim=True)
    h[:200, :2] = pair * (0.99 + (torch.rand(200, 1, generator=generator) - 0.5) * 2e-6)
    general, lean = StepwiseHalting((400,)), StepwiseHalting((400,))
    for i in range(6):
        last = i == 5
        assert torch.equal(lean.rest, 1.0 - lean.cumulative)
        assert lean.count_running() == int(lean.running.sum()) and lean.all_running() == bool(lean.running.all())
        p_general = general.update(h[:, i], force_halt=last)
        p_lean = lean.update(torch.where(lean.running, h[:, i], torch.zeros(())), force_halt=last, zero_after_halt=True)
        assert torch.equal(p_general, p_lean)
        for name in ("cumulative", "running", "steps", "remainder"):
            assert torch.equal(getattr(general, name), getattr(lean, name)), name
    assert torch.equal(general.ponder_cost, lean.ponder_cost) and not lean.any_running()
    assert (lean.steps[:200] == 2).any() and (lean.steps[:200] == 3).any()  # straddles the threshold
