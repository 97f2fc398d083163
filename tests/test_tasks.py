"""Tests of ponderscope/core/tasks.py against straightforward re-computations from the paper's text."""
import pytest
import torch

from ponderscope.core import tasks as T


def gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


# ------------------------------------------------------------------------------- parity ----

def test_parity_values_counts_and_labels():
    bits = 6
    x, y = T.parity_batch(3000, bits, gen(0))
    assert x.shape == (3000, bits) and x.dtype == torch.float32
    assert y.shape == (3000,) and y.dtype == torch.int64
    assert set(x.unique().tolist()) <= {-1.0, 0.0, 1.0}
    for row, label in zip(x.tolist(), y.tolist()):
        assert label == sum(v == 1 for v in row) % 2       # odd number of +1 entries
    counts = T.parity_nonzero(x)
    assert counts.tolist() == [sum(v != 0 for v in row) for row in x.tolist()]
    assert counts.min() >= 1 and counts.max() <= bits
    assert set(counts.tolist()) == set(range(1, bits + 1))  # every difficulty occurs
    assert set(y.tolist()) == {0, 1}
    # positions are random, not the first k: some row has a 0 before a nonzero entry
    assert any(0.0 in row[:row.index(next(v for v in reversed(row) if v))] for row in x.tolist())
    # -1 entries do not count as ones: a row with only -1s must have label 0
    only_minus = (x <= 0).all(dim=1)
    assert only_minus.any() and (y[only_minus] == 0).all()


def test_parity_is_deterministic_per_generator():
    a = T.parity_batch(64, 16, gen(7))
    b = T.parity_batch(64, 16, gen(7))
    c = T.parity_batch(64, 16, gen(8))
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
    assert not torch.equal(a[0], c[0])


# -------------------------------------------------------------------------------- logic ----

# Table 1 of Graves 2016, rows for (P, Q) = (T,T), (T,F), (F,T), (F,F).
PAPER_TABLE = {
    "NOR": "FFFT", "Xq": "FFTF", "ABJ": "FTFF", "XOR": "FTTF", "NAND": "FTTT",
    "AND": "TFFF", "XNOR": "TFFT", "if/then": "TFTT", "then/if": "TTFT", "OR": "TTTF",
}


def paper_gate(name: str, p: int, q: int) -> int:
    row = {(1, 1): 0, (1, 0): 1, (0, 1): 2, (0, 0): 3}[(p, q)]
    return int(PAPER_TABLE[name][row] == "T")


def test_logic_table_matches_paper():
    assert list(PAPER_TABLE) == list(T.LOGIC_GATES)
    for g, name in enumerate(T.LOGIC_GATES):
        for p in (0, 1):
            for q in (0, 1):
                assert T.LOGIC_TABLE[g, p, q] == paper_gate(name, p, q), (name, p, q)


def test_logic_targets_match_recomputation():
    max_length, max_ops = 6, 4
    x, y, mask = T.logic_batch(200, gen(1), max_length=max_length, max_ops=max_ops)
    assert x.shape == (200, max_length, 2 + 10 * max_ops) and x.dtype == torch.float32
    assert y.shape == mask.shape == (200, max_length) and y.dtype == torch.int64 and mask.dtype == torch.bool
    lengths = mask.sum(dim=1)
    assert set(lengths.tolist()) == set(range(1, max_length + 1))
    for b in range(200):
        L = int(lengths[b])
        assert mask[b, :L].all() and not mask[b, L:].any()
        assert (x[b, L:] == 0).all() and (y[b, L:] == T.IGNORE_INDEX).all()
        carried = None
        for t in range(L):
            v = x[b, t].tolist()
            chunks = [v[2 + 10 * k: 12 + 10 * k] for k in range(max_ops)]
            gates = [c.index(1.0) for c in chunks if sum(c) == 1]
            assert all(sum(c) in (0, 1) for c in chunks)
            assert 1 <= len(gates) and all(sum(c) == 1 for c in chunks[:len(gates)])  # leading chunks
            b0 = int(v[0]) if t == 0 else carried
            if t > 0:
                assert v[0] == 0                 # b0 is implicit after the first step
            bits = [b0, int(v[1])]               # b_0, b_1
            for g in gates:                      # b_{i+1} = T_{h_i}(b_i, b_{i-1})
                bits.append(paper_gate(T.LOGIC_GATES[g], bits[-1], bits[-2]))
            carried = bits[-1]
            assert y[b, t] == carried, (b, t)
    assert T.logic_num_ops(x)[mask].min() >= 1 and T.logic_num_ops(x)[mask].max() <= max_ops


def test_logic_defaults_match_paper_and_are_deterministic():
    x, y, mask = T.logic_batch(16, gen(3))
    assert x.shape == (16, 10, 102) and T.logic_features() == 102
    x2, y2, mask2 = T.logic_batch(16, gen(3))
    assert torch.equal(x, x2) and torch.equal(y, y2) and torch.equal(mask, mask2)


# ----------------------------------------------------------------------------- addition ----

def test_addition_targets_match_recomputation():
    x, y, mask = T.addition_batch(200, gen(2))
    assert x.shape == (200, 5, 50) and x.dtype == torch.float32
    assert y.shape == (200, 5, 6) and y.dtype == torch.int64 and mask.shape == (200, 5)
    assert T.addition_target_digits() == 6
    lengths = mask.sum(dim=1)
    assert set(lengths.tolist()) == set(range(1, 6))
    n_digits_seen = set()
    for b in range(200):
        L = int(lengths[b])
        assert (x[b, L:] == 0).all() and (y[b, L:] == T.IGNORE_INDEX).all()
        assert (y[b, 0] == T.IGNORE_INDEX).all()          # no target at the first step
        total = 0
        for t in range(L):
            v = x[b, t].tolist()
            chunks = [v[10 * k: 10 * k + 10] for k in range(5)]
            digits = [c.index(1.0) for c in chunks if sum(c) == 1]
            assert all(sum(c) == 1 for c in chunks[:len(digits)]) and all(sum(c) == 0 for c in chunks[len(digits):])
            assert 1 <= len(digits) <= 5
            n_digits_seen.add(len(digits))
            total += int("".join(map(str, digits)))       # most significant digit first
            if t > 0:
                expected = [int(ch) for ch in str(total)] + [T.ADDITION_EMPTY] * (6 - len(str(total)))
                assert y[b, t].tolist() == expected, (b, t, total)
    assert n_digits_seen == {1, 2, 3, 4, 5}
    assert T.addition_num_digits(x)[mask].min() == 1


def test_addition_sizes_and_determinism():
    x, y, mask = T.addition_batch(8, gen(4), max_length=3, max_digits=2)
    assert x.shape == (8, 3, 20) and y.shape == (8, 3, 3)   # 3 * 99 = 297 has 3 digits
    again = T.addition_batch(8, gen(4), max_length=3, max_digits=2)
    assert all(torch.equal(a, b) for a, b in zip((x, y, mask), again))
    with pytest.raises(ValueError):
        T.addition_batch(8, gen(4), max_length=0)


# --- the byte LM's held-out statistics (Text view corpus panel, cards) ---------------------------


def test_char_classes_of_graves_analysis():
    from ponderscope.core.workloads import byte_class, char_class

    text = '(Hi 42), <b>x\nnaïve'
    classes = [char_class(c, text[i - 1] if i else None) for i, c in enumerate(text)]
    assert classes == ["punctuation", "word_start", "letter", "space", "digit", "digit", "punctuation", "punctuation", "space",
                       "other", "word_start", "other", "word_start", "newline", "word_start", "letter", "letter", "letter", "letter"]
    # the LM reads bytes: ASCII bytes are their characters, a multi-byte character's bytes are "other"
    data = text.encode("utf-8")
    by_byte = [byte_class(b, data[i - 1] if i else None) for i, b in enumerate(data)]
    assert by_byte[:15] == classes[:15] and by_byte[15:] == ["letter", "other", "other", "word_start", "letter"]


def test_ponder_statistics_by_hand():
    import math

    import torch

    from ponderscope.core.workloads import ponder_statistics

    steps = torch.tensor([1.0, 2.0, 1.0, 3.0, 1.0, 1.0])
    ponders = torch.tensor([2.0, 2.5, 2.0, 3.5, 2.0, 2.0])
    losses = torch.tensor([1.0, 2.0, 1.0, 4.0, 1.0, 0.5]) * math.log(2)  # nats: 1, 2, 1, 4, 1, 0.5 bits
    classes = ["letter", "space", "letter", "space", "word_start", "letter"]
    stats = ponder_statistics(steps, ponders, losses, classes, max_steps=3)
    space = stats["per_char_class"]["space"]
    assert space["count"] == 2 and space["steps"] == 2.5 and space["steps_std"] == 0.5
    assert space["ponder"] == 3.0 and space["ponder_std"] == 0.5 and abs(space["bits"] - 3.0) < 1e-6
    assert stats["per_char_class"]["letter"]["steps_std"] == 0.0 and list(stats["per_char_class"]) == ["space", "word_start", "letter"]
    assert stats["steps_mode"] == 1 and abs(stats["steps_off_mode_fraction"] - 2 / 6) < 1e-12
    assert abs(stats["steps_at_cap_fraction"] - 1 / 6) < 1e-12 and stats["steps_histogram"] == {"1": 4, "2": 1, "3": 1}
    # Pearson by hand
    x, y = [2.0, 2.5, 2.0, 3.5, 2.0, 2.0], [1.0, 2.0, 1.0, 4.0, 1.0, 0.5]
    mx, my = sum(x) / 6, sum(y) / 6
    r = sum((a - mx) * (b - my) for a, b in zip(x, y)) / math.sqrt(sum((a - mx) ** 2 for a in x) * sum((b - my) ** 2 for b in y))
    assert abs(stats["corr_ponder_surprisal"] - r) < 1e-9
    flat = ponder_statistics(torch.ones(4), torch.full((4,), 2.0), torch.rand(4), ["letter"] * 4, None)
    assert flat["corr_ponder_surprisal"] is None and "steps_at_cap_fraction" not in flat
