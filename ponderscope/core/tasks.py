"""The synthetic tasks of Graves 2016, "Adaptive Computation Time for Recurrent Neural Networks"
(arXiv 1603.08983, section 3): parity, logic and addition.

Every generator draws only from the torch.Generator it is given (never global RNG state), so a
seeded generator reproduces a batch exactly. Tensors are made on the CPU.

Sequence tasks return (x [B,T,F] float32, y int64, mask [B,T] bool) with T fixed at
`max_length`: mask is True on the real steps of each sequence, False on padding. Targets that
are not scored (padding; addition's first step) hold IGNORE_INDEX, which is also the default
ignore_index of torch's cross-entropy losses.
"""
from __future__ import annotations

import torch

IGNORE_INDEX = -100


# --------------------------------------------------------------------------------------------
# Parity (section 3.1)
# --------------------------------------------------------------------------------------------

def parity_batch(batch: int, bits: int, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """(x float32 [B,bits], y int64 [B]).

    As in the paper: a random number k ~ U{1..bits} of the entries are set to +1 or -1 (each sign
    with probability 1/2), the rest are 0. The paper places them "randomly"; here the k positions
    are a uniform random subset (some ports fill the first k instead). The target is 1 when the
    number of entries equal to +1 is odd, else 0 ("1 if there was an odd number of ones"): the
    -1 entries are distractors, not ones. One vector is one sequence step.
    """
    if batch < 1 or bits < 1:
        raise ValueError("batch and bits must be positive")
    count = torch.randint(1, bits + 1, (batch,), generator=generator)
    # argsort of uniform noise is a random permutation; its inverse gives each slot a random rank.
    rank = torch.rand(batch, bits, generator=generator).argsort(dim=1).argsort(dim=1)
    sign = torch.randint(0, 2, (batch, bits), generator=generator) * 2 - 1
    x = torch.where(rank < count[:, None], sign, 0).float()
    y = ((x == 1).sum(dim=1) % 2).long()
    return x, y


def parity_nonzero(x: torch.Tensor) -> torch.Tensor:
    """Number of nonzero entries of each parity input, int64 [B]: the task's difficulty axis
    (the paper plots ponder time against it)."""
    return (x != 0).sum(dim=-1)


# --------------------------------------------------------------------------------------------
# Logic (section 3.2)
# --------------------------------------------------------------------------------------------

# Table 1 of the paper: the 10 binary gates that depend on both inputs, in the paper's column
# order. Indexed LOGIC_TABLE[gate, P, Q] with P, Q in {0, 1}.
LOGIC_GATES = ("NOR", "Xq", "ABJ", "XOR", "NAND", "AND", "XNOR", "if/then", "then/if", "OR")
_GATE_FUNCS = (
    lambda p, q: not (p or q),       # NOR
    lambda p, q: (not p) and q,      # Xq: converse nonimplication
    lambda p, q: p and not q,        # ABJ: material nonimplication (abjunction)
    lambda p, q: p != q,             # XOR
    lambda p, q: not (p and q),      # NAND
    lambda p, q: p and q,            # AND
    lambda p, q: p == q,             # XNOR
    lambda p, q: (not p) or q,       # if/then: P -> Q
    lambda p, q: p or not q,         # then/if: Q -> P
    lambda p, q: p or q,             # OR
)
LOGIC_TABLE = torch.tensor([[[int(bool(f(p, q))) for q in (0, 1)] for p in (0, 1)] for f in _GATE_FUNCS])


def logic_features(max_ops: int = 10) -> int:
    """Input width of logic_batch: 2 bits + max_ops one-hot chunks of 10 gates (102 in the paper)."""
    return 2 + len(LOGIC_GATES) * max_ops


def logic_batch(batch: int, generator: torch.Generator, max_length: int = 10,
                max_ops: int = 10) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(x float32 [B,T,2+10*max_ops], y int64 [B,T] in {0,1}, mask bool [B,T]), T = max_length.

    Each sequence has L ~ U{1..max_length} steps. At every step the vector holds
      x[0] = b0, x[1] = b1, then max_ops chunks of 10: the first n ~ U{1..max_ops} chunks are
      one-hot gate indices h_1..h_n (uniform over LOGIC_GATES), the rest are zero.
    The target is b_{n+1}, applying the gates in order to the two latest bits:
      b_{i+1} = T_{h_i}(P = b_i, Q = b_{i-1}),  i = 1..n.
    At the first step b0 and b1 are both random. At later steps only b1 is random: b0 is the
    previous step's target, which the network must carry, and x[0] is left at 0. Which of the
    two leading slots holds b0 is not fixed by the paper; here it is slot 0.
    Padding: x = 0, y = IGNORE_INDEX, mask = False.
    """
    if batch < 1 or max_length < 1 or max_ops < 1:
        raise ValueError("batch, max_length and max_ops must be positive")
    n_gates = len(LOGIC_GATES)
    lengths = torch.randint(1, max_length + 1, (batch,), generator=generator)
    n_ops = torch.randint(1, max_ops + 1, (batch, max_length), generator=generator)
    gates = torch.randint(0, n_gates, (batch, max_length, max_ops), generator=generator)
    b1 = torch.randint(0, 2, (batch, max_length), generator=generator)
    first_b0 = torch.randint(0, 2, (batch,), generator=generator)

    used = torch.arange(max_ops) < n_ops[..., None]                    # [B,T,ops]
    onehot = torch.nn.functional.one_hot(gates, n_gates) * used[..., None]
    x = torch.zeros(batch, max_length, logic_features(max_ops))
    x[:, 0, 0] = first_b0.float()
    x[:, :, 1] = b1.float()
    x[:, :, 2:] = onehot.reshape(batch, max_length, -1).float()

    y = torch.empty(batch, max_length, dtype=torch.long)
    carried = first_b0
    for t in range(max_length):
        older, newer = carried, b1[:, t]
        for k in range(max_ops):
            out = LOGIC_TABLE[gates[:, t, k], newer, older]
            older, newer = torch.where(used[:, t, k], newer, older), torch.where(used[:, t, k], out, newer)
        y[:, t] = carried = newer

    mask = torch.arange(max_length) < lengths[:, None]
    x[~mask] = 0
    y[~mask] = IGNORE_INDEX
    return x, y, mask


def logic_num_ops(x: torch.Tensor) -> torch.Tensor:
    """Number of gates at each step of a logic input [..., 2+10*ops] -> int64 [...] (difficulty)."""
    return x[..., 2:].sum(dim=-1).round().long()


# --------------------------------------------------------------------------------------------
# Addition (section 3.3)
# --------------------------------------------------------------------------------------------

ADDITION_EMPTY = 10          # the 11th class: "no digit here, the number is complete"
ADDITION_CLASSES = 11


def addition_target_digits(max_length: int = 5, max_digits: int = 5) -> int:
    """Digit positions needed for the largest possible running sum (6 in the paper)."""
    return len(str(max_length * (10 ** max_digits - 1)))


def addition_batch(batch: int, generator: torch.Generator, max_length: int = 5,
                   max_digits: int = 5) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(x float32 [B,T,10*max_digits], y int64 [B,T,S], mask bool [B,T]), T = max_length,
    S = addition_target_digits(max_length, max_digits) (6 for the paper's 5 and 5).

    Each sequence has L ~ U{1..max_length} steps; each step is a number of D ~ U{1..max_digits}
    digits, each digit uniform in 0..9 (so leading zeros occur, as in the paper). Input: the
    first 10*D entries are the one-hot digits, most significant first; the rest are 0.
    Target at step t: the running sum of the numbers at steps 1..t, written most significant
    digit first in S positions of 11 classes (0-9, then ADDITION_EMPTY after the last digit).
    As in the paper the first step has no target (no sum has been formed yet): its y, like
    padding, is IGNORE_INDEX. mask marks the real steps, the first one included.
    """
    if batch < 1 or max_length < 1 or max_digits < 1:
        raise ValueError("batch, max_length and max_digits must be positive")
    if max_digits > 17:
        raise ValueError("max_digits above 17 overflows int64 sums")
    lengths = torch.randint(1, max_length + 1, (batch,), generator=generator)
    n_digits = torch.randint(1, max_digits + 1, (batch, max_length), generator=generator)
    digits = torch.randint(0, 10, (batch, max_length, max_digits), generator=generator)
    used = torch.arange(max_digits) < n_digits[..., None]              # [B,T,D]
    mask = torch.arange(max_length) < lengths[:, None]                 # [B,T]
    used &= mask[..., None]

    x = (torch.nn.functional.one_hot(digits, 10) * used[..., None]).reshape(batch, max_length, -1).float()

    # Value of each number: digit k (MSB first) weighs 10^(D-1-k).
    power = (n_digits[..., None] - 1 - torch.arange(max_digits)).clamp(min=0)
    values = (digits * 10 ** power * used).sum(dim=-1)                 # [B,T]
    sums = values.cumsum(dim=1)

    n_out = addition_target_digits(max_length, max_digits)
    sum_len = torch.ones_like(sums)                                    # decimal length, 0 -> 1
    for p in range(1, n_out):
        sum_len += (sums >= 10 ** p).long()
    pos = torch.arange(n_out)
    shift = (sum_len[..., None] - 1 - pos).clamp(min=0)
    y = torch.where(pos < sum_len[..., None], sums[..., None] // 10 ** shift % 10, ADDITION_EMPTY)
    y[:, 0] = IGNORE_INDEX
    y[~mask] = IGNORE_INDEX
    return x, y, mask


def addition_num_digits(x: torch.Tensor) -> torch.Tensor:
    """Number of digits of each addition input step [..., 10*D] -> int64 [...] (difficulty)."""
    return x.sum(dim=-1).round().long()
