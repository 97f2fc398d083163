"""The causal transformer layer the byte-level language models share (models/universal_transformer.py,
models/mixture_of_depths.py), with the one thing they need that a plain layer lacks: run on a
subset of the tokens.

A pre-norm layer maps the states x [B, T, d] of one window to

    a_t   = x_t + W_o attend(q_t, {k_s, v_s : s <= t, s a key})     q, k, v from LN(x)
    y_t   = a_t + MLP(LN(a_t))                                       update u_t = y_t - x_t

for the *query* tokens, attending over the *key* tokens (causal: only keys at or before t). The
Universal Transformer's running tokens are its queries and every token is a key (a halted token
keeps its state, and later tokens still read it); a Mixture-of-Depths block's routed tokens are
both (the others are not in the block at all).

Two executions give the same numbers (models/sparse.py; tests/test_token_layers.py):
- masked: every token is computed, the attention mask drops the keys that are not keys, and the
  caller keeps the update only where a token is a query (the reference);
- sparse: each window's query tokens are gathered to [B, most queries, d] (the shorter rows
  padded, the padding masked out), and the keys likewise when they are a subset, so nothing else
  is computed.

FLOPs (2 x multiply-adds; biases, norms and softmax ignored), per layer: 2 x 2d^2 per key token
(k, v), 2 x 2d^2 + 2 x 2 d m per query token (q, W_o, the MLP of width m), and 2 x 2d per
(query, visible key) pair (q.k and the weighted sum of v).
"""
from __future__ import annotations

from typing import Optional

import torch
import torch.nn as nn
import torch.nn.functional as F

from .registry import register_family
from .sparse import gather_index, gathered

# The dense twins of both byte LMs (a Universal Transformer without ACT, a transformer without routing).
register_family("transformer", "transformer (dense)", "runs every byte through every layer: nothing adaptive", reference=True)

BYTES = 256  # the vocabulary: one symbol per byte value


class CausalLayer(nn.Module):
    def __init__(self, dim: int, heads: int, mlp_ratio: float = 4.0):
        super().__init__()
        if dim % heads:
            raise ValueError(f"dim {dim} is not a multiple of heads {heads}")
        self.heads, hidden = heads, int(dim * mlp_ratio)
        self.norm1, self.norm2 = nn.LayerNorm(dim), nn.LayerNorm(dim)
        self.q, self.kv, self.out = nn.Linear(dim, dim), nn.Linear(dim, 2 * dim), nn.Linear(dim, dim)
        self.mlp = nn.Sequential(nn.Linear(dim, hidden), nn.GELU(), nn.Linear(hidden, dim))

    def _split(self, x: torch.Tensor) -> torch.Tensor:
        b, n, d = x.shape
        return x.view(b, n, self.heads, d // self.heads).transpose(1, 2)  # [B, heads, n, d/heads]

    def _update(self, x_q, pos_q, x_k, pos_k, valid_k: Optional[torch.Tensor]) -> torch.Tensor:
        """The update u of the tokens x_q [B, Q, d] at positions pos_q [B, Q] (or [Q]), attending to
        x_k [B, S, d] at pos_k, of which valid_k [B, S] are keys (None: all)."""
        b, n, d = x_q.shape
        k, v = self.kv(self.norm1(x_k)).chunk(2, -1)
        mask = pos_k.unsqueeze(-2) <= pos_q.unsqueeze(-1)  # [B or 1, Q, S]: causal
        if valid_k is not None:
            mask = mask & valid_k.unsqueeze(-2)
        # A query with no key (a token none of whose earlier tokens is a key) would get NaN from
        # the softmax: it reads the first slot instead. Such rows are ones the caller drops (masked
        # execution's non-queries, sparse execution's padding); a real query is a key itself.
        empty = ~mask.any(-1)
        if bool(empty.any()):
            mask = mask.clone()
            mask[..., 0] |= empty
        if mask.dim() == 3:
            mask = mask.unsqueeze(1)
        attended = F.scaled_dot_product_attention(self._split(self.q(self.norm1(x_q))), self._split(k), self._split(v), attn_mask=mask)
        a = x_q + self.out(attended.transpose(1, 2).reshape(b, n, d))
        return a + self.mlp(self.norm2(a)) - x_q

    def masked_update(self, x: torch.Tensor, keys: Optional[torch.Tensor] = None) -> torch.Tensor:
        """The update of every token of x [B, T, d] (keys [B, T] bool: the tokens that may be read; None: all)."""
        positions = torch.arange(x.shape[1], device=x.device)
        return self._update(x, positions, x, positions, keys)

    def sparse_update(self, x: torch.Tensor, queries: torch.Tensor, keys: Optional[torch.Tensor] = None,
                      weight: Optional[torch.Tensor] = None) -> torch.Tensor:
        """x [B, T, d] with the update (times weight [B, T], where given) added at the query tokens
        only (queries [B, T] bool), which alone are computed; keys as in masked_update (keys that
        are a subset are gathered too)."""
        b, t, d = x.shape
        if keys is None and bool(queries.all()):
            update = self.masked_update(x)
            return x + (update if weight is None else weight.unsqueeze(-1) * update)
        rows_with_queries = queries.any(1)
        if not bool(rows_with_queries.any()):
            return x
        if not bool(rows_with_queries.all()):  # a row (window) with no query is not computed at all, its keys neither
            rows = rows_with_queries.nonzero().squeeze(1)
            pick = lambda v: None if v is None else v[rows]  # noqa: E731
            return x.index_copy(0, rows, self.sparse_update(x[rows], queries[rows], pick(keys), pick(weight)))
        q_index, q_valid = gather_index(queries)
        x_q = gathered(x, q_index)
        if keys is None:
            positions = torch.arange(t, device=x.device)
            update = self._update(x_q, q_index, x, positions, None)
        else:
            k_index, k_valid = gather_index(keys)
            update = self._update(x_q, q_index, gathered(x, k_index), k_index, None if bool(k_valid.all()) else k_valid)
        if weight is not None:
            update = weight.gather(1, q_index).unsqueeze(-1) * update
        if bool(q_valid.all()):  # no padding (one window, or a fixed number per row: top-k)
            return x.scatter_add(1, q_index.unsqueeze(-1).expand(-1, -1, d), update)
        rows = torch.arange(b, device=x.device).unsqueeze(1).expand_as(q_index)[q_valid]
        return x.index_put((rows, q_index[q_valid]), update[q_valid], accumulate=True)

    # ------------------------------------------------------------------ FLOPs
    def token_flops(self) -> tuple[int, int, int]:
        """(per key token, per query token, per (query, visible key) pair)."""
        d, hidden = self.q.in_features, self.mlp[0].out_features
        return 2 * 2 * d * d, 2 * 2 * d * d + 2 * 2 * d * hidden, 2 * 2 * d

    def flops(self, queries: torch.Tensor, keys: Optional[torch.Tensor] = None) -> torch.Tensor:
        """[B] this layer's FLOPs for the query tokens queries [B, T] bool reading keys [B, T] (None: all)."""
        per_key, per_query, per_pair = self.token_flops()
        keys = torch.ones_like(queries) if keys is None else keys
        visible = keys.to(torch.float64).cumsum(1)  # keys at or before each position
        pairs = (visible * queries).sum(1)
        return (keys.sum(1) * per_key + queries.sum(1) * per_query + pairs * per_pair).to(torch.float64)


def window_sizes(length: int, context: int) -> list[int]:
    """The windows a text of `length` bytes is read in: full windows of `context` bytes, then the rest."""
    return [context] * (length // context) + ([length % context] if length % context else [])


def readout_flops(head: nn.Linear, n: int) -> int:
    """The softmax layer's FLOPs for n bytes."""
    return 2 * head.in_features * head.out_features * n


class ByteWindows:
    """A byte LM of context C reads text in windows of C bytes, each from scratch, as the held-out
    evaluation (ponderscope.core.workloads.BytesLM) does: x [B, T] -> windows [B * T // C, C] and the
    shorter rest [B, T % C]; `join` puts per-window results back in text order."""

    def __init__(self, x: torch.Tensor, context: int):
        self.batch, self.length, self.context = x.shape[0], x.shape[1], context
        full = self.length // context * context
        self.parts = [p for p in (x[:, :full].reshape(-1, context) if full else None, x[:, full:] if full < self.length else None) if p is not None]

    def join(self, values: list[torch.Tensor]) -> torch.Tensor:
        """One tensor per part, [windows, n, ...] -> [B, T, ...]."""
        return torch.cat([v.reshape(self.batch, -1, *v.shape[2:]) for v in values], 1)

    def per_text(self, values: list[torch.Tensor]) -> torch.Tensor:
        """One [windows] tensor per part (a per-window total) -> [B], the sum over each text's windows."""
        return sum(v.reshape(self.batch, -1).sum(1) for v in values)
