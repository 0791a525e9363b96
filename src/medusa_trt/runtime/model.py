"""One rank of a Llama 3.x decoder executing a TRT-LLM shard, with a static KV cache and Medusa heads.

Each rank holds H/t query heads, ceil(KV/t) KV heads (replicated when KV < t), an I/t MLP slice and
V/t lm_head rows. Two all-reduces per layer (after attention ``dense`` and after MLP ``proj``); the
vocab-parallel logits are gathered on rank 0. The KV cache is one preallocated tensor
``[layers, 2, KVl, capacity, hd]`` so tree compaction is a single gather-copy for all layers.
Batched greedy decoding (distillation) has its own cache with a batch dimension, ``[layers, 2, B, KVl,
capacity, hd]``, and the same layer math (``_qkv``, ``_dense_mlp``) over [B, T] blocks.
"""

from __future__ import annotations

import math
from typing import Protocol

# torch at module level is fine here: runtime modules load only inside commands that compute.
import torch
import torch.nn.functional as F

from medusa_trt.errors import CheckpointError, InvalidInputError
from medusa_trt.runtime.config import CheckpointInfo
from medusa_trt.runtime.kernels import linear
from medusa_trt.runtime.weights import LayerWeights, ShardWeights, load_shard


class Comm(Protocol):
    rank: int
    size: int

    def all_reduce(self, t: torch.Tensor) -> None: ...
    def all_gather_last(self, t: torch.Tensor) -> torch.Tensor: ...
    def gather_last(self, t: torch.Tensor, rows: list[int]) -> torch.Tensor | None: ...


class LocalComm:
    """tp = 1: every collective is the identity."""

    rank, size = 0, 1

    def all_reduce(self, t: torch.Tensor) -> None:
        return None

    def all_gather_last(self, t: torch.Tensor) -> torch.Tensor:
        return t

    def gather_last(self, t: torch.Tensor, rows: list[int]) -> torch.Tensor | None:
        return t


def llama3_inv_freq(head_size: int, base: float, scaling: dict[str, float] | None) -> torch.Tensor:
    """Inverse RoPE frequencies [hd/2] with Llama 3 wavelength-dependent scaling (as HF computes them)."""
    inv = 1.0 / (base ** (torch.arange(0, head_size, 2, dtype=torch.int64).float() / head_size))
    if not scaling:
        return inv
    factor, low, high = scaling["factor"], scaling["low_freq_factor"], scaling["high_freq_factor"]
    old_ctx = scaling["original_max_position_embeddings"]
    wavelen = 2 * math.pi / inv
    scaled = torch.where(wavelen > old_ctx / low, inv / factor, inv)
    smooth = (old_ctx / wavelen - low) / (high - low)
    smoothed = (1 - smooth) * scaled / factor + smooth * scaled
    medium = (wavelen >= old_ctx / high) & (wavelen <= old_ctx / low)
    return torch.where(medium, smoothed, scaled)


def rms_norm(x: torch.Tensor, w: torch.Tensor, eps: float) -> torch.Tensor:
    if x.dtype == torch.float32:  # torch's fused op: the same values in one dispatch instead of seven
        return F.rms_norm(x, w.shape, w, eps)
    xf = x.float()  # lower precisions: normalise in float32, cast back, then scale (as Hugging Face does)
    xf = xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + eps)
    return w * xf.to(x.dtype)


def rotate(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """GPT-NeoX RoPE. x: [.., hd]; cos, sin: broadcastable to x, ``sin`` signed (its first half negated, see
    ``_rope``), so that rotating half the features is one roll: x*cos + cat(-x2, x1)*sin."""
    return x * cos + x.roll(x.shape[-1] // 2, -1) * sin


class LlamaShard:
    def __init__(self, info: CheckpointInfo, rank: int, device: str, comm: Comm) -> None:
        self.info, self.rank, self.device, self.comm = info, rank, device, comm
        self.w: ShardWeights = load_shard(info, rank, device)
        t = info.tp
        self.hd = info.head_size
        self.n_q = info.num_heads // t
        self.n_kv = (info.num_kv_heads + t - 1) // t
        self.eps = float(info.config.get("norm_epsilon", 1e-5))
        self.dtype = self.w.ln_f.dtype
        self._check_shapes()
        self.inv_freq = llama3_inv_freq(self.hd, float(info.config.get("rotary_base", 10000.0)), info.rope_scaling).to(
            device
        )  # [hd/2] float32
        self.cache: torch.Tensor | None = None  # [layers, 2, KVl, capacity, hd]
        self.length = 0
        self._rope_cs: torch.Tensor | None = None  # [2, P, hd]: cos and signed sin of positions 0..P-1
        self._bias: torch.Tensor | None = None  # [Tmax, capacity]: additive attention mask of a tree step
        self._block: tuple[torch.Tensor, torch.Tensor] | None = None  # the last tree mask, its additive [T, T]
        self.last_hidden: torch.Tensor | None = None  # [T, D] after ln_f, for the heads
        self.alloc_batch(0, 0)

    def _check_shapes(self) -> None:
        lw = self.w.layers[0]
        want = (self.n_q + 2 * self.n_kv) * self.hd
        if lw.qkv.shape != (want, self.info.hidden_size):
            raise CheckpointError(
                f"rank{self.rank}: attention.qkv is {tuple(lw.qkv.shape)}, expected {(want, self.info.hidden_size)}",
                hint="The shard does not match config.json (heads, KV heads, tp_size); convert again.",
            )
        if lw.fc_gate.shape[0] != 2 * self.info.intermediate_size // self.info.tp:
            raise CheckpointError(f"rank{self.rank}: mlp.fc/gate rows do not match intermediate_size / tp_size")

    # --- cache -----------------------------------------------------------------------------------
    def alloc(self, capacity: int) -> None:
        """Make room for ``capacity`` positions; reuses the buffer when it is large enough."""
        if self.cache is None or self.cache.shape[3] < capacity:
            shape = (self.info.num_layers, 2, self.n_kv, capacity, self.hd)
            self.cache = torch.zeros(shape, dtype=self.dtype, device=self.device)
        self.length = 0

    def commit(self, start: int, count: int, keep: torch.Tensor | None = None) -> None:
        """Keep ``count`` slots of the tree written at ``start``: ``keep`` [count] (ascending, relative to
        ``start``) gathered to ``start..``, one copy for all layers; None when they are already there
        (the accepted path is a prefix of the tree's node order)."""
        assert self.cache is not None
        if keep is not None:
            self.cache[:, :, :, start : start + count] = self.cache[:, :, :, start:].index_select(3, keep)
        self.length = start + count

    # --- forward ---------------------------------------------------------------------------------
    def _attn_mask(self, t: int, n: int, tree_mask: torch.Tensor | None) -> tuple[torch.Tensor | None, bool]:
        if tree_mask is not None:
            return self._tree_bias(t, n, tree_mask), False
        if t == 1:
            return None, False
        if n == 0:
            return None, True
        causal = torch.ones(t, n + t, dtype=torch.bool, device=self.device).tril(n)
        return causal, False

    def _tree_bias(self, t: int, n: int, tree_mask: torch.Tensor) -> torch.Tensor:
        """The additive mask [T, n+T] of a tree step: the prefix visible to every node (0), the tree block
        -inf where ``tree_mask`` [T, T] is False. A view of one buffer kept across steps, so nothing is
        allocated per step and SDPA need not convert a boolean mask in every layer; ``forward`` clears
        the block afterwards (those slots are the next steps' prefix)."""
        assert self.cache is not None
        if self._bias is None or self._bias.shape[0] < t or self._bias.shape[1] != self.cache.shape[3]:
            self._bias = torch.zeros(max(t, 16), self.cache.shape[3], dtype=self.dtype, device=self.device)
        self._bias[:t, n : n + t].copy_(self._additive(tree_mask))
        return self._bias[:t, : n + t]

    def _additive(self, tree_mask: torch.Tensor) -> torch.Tensor:
        """``tree_mask`` [T, T] as 0 / -inf in the model's dtype, built again only when the mask changes
        (rank 0 passes the same subtree's mask step after step; a worker rank receives a copy each step)."""
        if self._block is None or self._block[0] is not tree_mask:
            block = torch.zeros(tree_mask.shape, dtype=self.dtype, device=self.device)
            self._block = (tree_mask, block.masked_fill_(tree_mask.logical_not(), -float("inf")))
        return self._block[1]

    def _rope_at(self, pos: torch.Tensor, bound: int | None) -> tuple[torch.Tensor, torch.Tensor]:
        """cos and signed sin [T, 1, hd] for positions ``pos`` [T]; from a table grown on demand when the
        caller knows every position is below ``bound`` (decoding does), else computed."""
        if bound is None:
            cos, sin = self._rope(pos)
            return cos[:, None], sin[:, None]
        table = self._rope_cs
        if table is None or table.shape[1] < bound:
            size = max(bound, 2 * (table.shape[1] if table is not None else 256))
            table = self._rope_cs = torch.stack(self._rope(torch.arange(size, device=self.device)))  # [2, P, hd]
        assert table is not None
        cs = table[:, pos, None]  # [2, T, 1, hd]: one gather for both
        return cs[0], cs[1]

    @torch.inference_mode()
    def forward(
        self,
        ids: torch.Tensor,
        pos: torch.Tensor,
        tree_mask: torch.Tensor | None = None,
        *,
        pos_bound: int | None = None,
        last: bool = False,
    ) -> torch.Tensor | None:
        """Run T tokens at cache slots [length, length+T) with RoPE positions ``pos``.

        ids, pos: [T] long; ``pos_bound``: every position is below it (RoPE then comes from a table).
        Returns the gathered logits [T, V] (float32; with ``last`` only the last token's, [1, V]) on
        rank 0, None elsewhere, and keeps ``last_hidden`` (the rows the logits are for) for the heads.
        """
        assert self.cache is not None, "alloc() first"
        t, n = ids.shape[0], self.length
        if n + t > self.cache.shape[3]:
            raise InvalidInputError(f"KV cache full ({n}+{t} > {self.cache.shape[3]})")
        mask, causal = self._attn_mask(t, n, tree_mask)
        # a causal forward whose last row alone is wanted: the top layer needs every row's keys and
        # values, but only that row's query, dense and MLP (a tree's last node does not see every slot)
        top = len(self.w.layers) - 1 if last and t > 1 and tree_mask is None else -1
        try:
            return self._forward(ids, pos, n, mask, causal, pos_bound, last, top)
        finally:
            if tree_mask is not None:
                assert self._bias is not None
                self._bias[:t, n : n + t] = 0  # these slots are every later step's prefix

    def _forward(
        self,
        ids: torch.Tensor,
        pos: torch.Tensor,
        n: int,
        mask: torch.Tensor | None,
        causal: bool,
        pos_bound: int | None,
        last: bool,
        top: int,
    ) -> torch.Tensor | None:
        t = ids.shape[0]
        w = self.w
        assert self.cache is not None
        x = self._embed(ids)  # [T, D]
        cos, sin = self._rope_at(pos, pos_bound)  # [T, 1, hd]
        for i, lw in enumerate(w.layers):
            q, k, v = self._qkv(x, lw, cos, sin)  # [Hl, T, hd], [KVl, T, hd] x2
            cache = self.cache[i]  # [2, KVl, cap, hd]
            cache[0, :, n : n + t] = k
            cache[1, :, n : n + t] = v
            if i == top:  # the last row's query sees every slot: no mask
                q, x, mask, causal = q[:, -1:], x[-1:], None, False  # [Hl, 1, hd], [1, D]
            o = F.scaled_dot_product_attention(
                q[None],
                cache[0, :, : n + t][None],
                cache[1, :, : n + t][None],
                attn_mask=mask,
                is_causal=causal,
                enable_gqa=self.n_q != self.n_kv,
            )  # [1, Hl, T, hd]
            x = self._dense_mlp(x, o[0].transpose(0, 1).flatten(-2), lw)
        self.length = n + t
        x = rms_norm(x[-1:] if last else x, w.ln_f, self.eps)  # [T or 1, D]
        self.last_hidden = x
        return self.gather_vocab(linear(x, w.lm_head).float(), w.vocab_rows)  # [T or 1, V] on rank 0

    def _qkv(
        self, x: torch.Tensor, lw: LayerWeights, cos: torch.Tensor, sin: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """A layer's q [.., Hl, T, hd] and k, v [.., KVl, T, hd], RoPE applied (q and k in one go), from
        x [.., T, D]; cos, sin [.., T, 1, hd]."""
        qkv = linear(rms_norm(x, lw.ln1, self.eps), lw.qkv)  # [.., T, (Hl + 2 KVl) hd]
        heads = qkv.unflatten(-1, (self.n_q + 2 * self.n_kv, self.hd))  # [.., T, Hl + 2 KVl, hd]
        qk = rotate(heads[..., : self.n_q + self.n_kv, :], cos, sin).transpose(-3, -2)  # [.., Hl + KVl, T, hd]
        v = heads[..., self.n_q + self.n_kv :, :].transpose(-3, -2)
        return qk[..., : self.n_q, :, :], qk[..., self.n_q :, :, :], v

    def _dense_mlp(self, x: torch.Tensor, o: torch.Tensor, lw: LayerWeights) -> torch.Tensor:
        """The rest of a layer: x [.., T, D] plus the attention output o [.., T, Hl hd] projected, then the MLP."""
        a = linear(o, lw.dense)  # [.., T, D] partial sum
        self.comm.all_reduce(a)
        x = x + a
        fc, gate = linear(rms_norm(x, lw.ln2, self.eps), lw.fc_gate).chunk(2, dim=-1)  # [.., T, Il] each
        m = linear(F.silu(fc) * gate, lw.proj)  # [.., T, D] partial sum
        self.comm.all_reduce(m)
        return x + m

    def _rope(self, pos: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """cos and signed sin (first half negated, for ``rotate``) [.., T, hd] for RoPE positions ``pos`` [.., T]."""
        freqs = pos.to(torch.float32)[..., None] * self.inv_freq  # [.., T, hd/2]
        emb = torch.cat([freqs, freqs], dim=-1)
        sin = emb.sin()
        sin[..., : self.hd // 2].neg_()
        return emb.cos().to(self.dtype), sin.to(self.dtype)

    # --- batched greedy forward (distillation): B left-padded rows, one cache row each -------------
    def alloc_batch(self, rows: int, capacity: int) -> None:
        """A batch KV cache [layers, 2, B, KVl, capacity, hd] with its key-validity mask [B, capacity]
        (False: a left pad); ``rows`` 0 frees it."""
        self.bcache: torch.Tensor | None = None  # freed first: the old and the new never coexist
        self.bvalid: torch.Tensor | None = None
        self.blength = 0
        if rows:
            shape = (self.info.num_layers, 2, rows, self.n_kv, capacity, self.hd)
            self.bcache = torch.zeros(shape, dtype=self.dtype, device=self.device)
            self.bvalid = torch.zeros(rows, capacity, dtype=torch.bool, device=self.device)

    def keep_rows(self, rows: torch.Tensor) -> None:
        """Keep only batch rows ``rows`` [B'] (ascending): finished sequences stop costing compute."""
        assert self.bcache is not None and self.bvalid is not None
        self.bcache = self.bcache.index_select(2, rows)
        self.bvalid = self.bvalid.index_select(0, rows)

    @torch.inference_mode()
    def forward_batch(self, ids: torch.Tensor, pos: torch.Tensor, valid: torch.Tensor) -> torch.Tensor | None:
        """Run a [B, T] block at batch-cache slots [blength, blength+T): RoPE positions ``pos`` [B, T],
        ``valid`` [B, T] False on left pads. Returns the last column's logits [B, V] (float32) on rank 0.

        A query sees the valid slots up to its own, and always itself, so a pad row stays finite
        (an all-masked row would be NaN, and 0 x NaN poisons every later attention)."""
        assert self.bcache is not None and self.bvalid is not None, "alloc_batch() first"
        b, t = ids.shape
        n = self.blength
        if n + t > self.bcache.shape[4]:
            raise InvalidInputError(f"batch KV cache full ({n}+{t} > {self.bcache.shape[4]})")
        x = self._embed(ids.reshape(-1)).view(b, t, -1)  # [B, T, D]
        cos, sin = (c[..., None, :] for c in self._rope(pos))  # [B, T, 1, hd]: broadcast over heads
        self.bvalid[:, n : n + t] = valid
        mask = torch.ones(t, n + t, dtype=torch.bool, device=self.device).tril(n) & self.bvalid[:, None, : n + t]
        diag = torch.arange(t, device=self.device)
        mask[:, diag, diag + n] = True  # [B, T, n+T]
        top = len(self.w.layers) - 1  # only the last column's logits are wanted: as in ``forward``
        for i, lw in enumerate(self.w.layers):
            q, k, v = self._qkv(x, lw, cos, sin)  # [B, Hl, T, hd], [B, KVl, T, hd] x2
            cache = self.bcache[i]  # [2, B, KVl, cap, hd]
            cache[0, :, :, n : n + t] = k
            cache[1, :, :, n : n + t] = v
            if i == top:
                q, x, mask = q[:, :, -1:], x[:, -1:], mask[:, -1:]  # [B, Hl, 1, hd], [B, 1, D], [B, 1, n+T]
            o = F.scaled_dot_product_attention(
                q,
                cache[0, :, :, : n + t],
                cache[1, :, :, : n + t],
                attn_mask=mask[:, None],
                enable_gqa=self.n_q != self.n_kv,
            )  # [B, Hl, T, hd]
            x = self._dense_mlp(x, o.transpose(1, 2).flatten(-2), lw)
        self.blength = n + t
        last = rms_norm(x[:, -1], self.w.ln_f, self.eps)  # [B, D]: only the next token is wanted
        return self.gather_vocab(linear(last, self.w.lm_head).float(), self.w.vocab_rows)

    def _embed(self, ids: torch.Tensor) -> torch.Tensor:
        w = self.w
        if not w.parallel_embedding:
            return w.embed[ids]
        local = ids - w.embed_offset  # rows held elsewhere contribute zeros, then all-reduce
        inside = (local >= 0) & (local < w.embed.shape[0])
        x = w.embed[local.clamp(0, w.embed.shape[0] - 1)] * inside[:, None].to(w.embed.dtype)
        self.comm.all_reduce(x)
        return x

    @torch.inference_mode()
    def heads(self, row: int, count: int = 0) -> torch.Tensor | None:
        """The first ``count`` (0: all) Medusa heads on ``last_hidden[row]``: x + silu(linear(x)) per
        layer, then lm_head. Returns [K, V] float32 logits on rank 0 (None elsewhere).

        Every head reads the same hidden state, so the first ResBlock of all K is one matmul over their
        stacked weights; later ResBlocks and the lm_heads are one batched matmul each (in bfloat16 the
        lm_heads are one packed product per head instead; heads whose lm_heads are all the base one
        run their K rows through it at once).
        """
        w = self.w
        assert self.last_hidden is not None and w.heads_b
        k = count or w.heads_b[0].shape[0]
        h = self.last_hidden[row]  # [D]
        d = h.shape[-1]
        x = h.expand(k, d)  # [K, D]
        for layer, (weight, bias) in enumerate(zip(w.heads_w, w.heads_b, strict=True)):
            dl = weight.shape[1]
            if layer == 0:  # [K*Dl, D] rows of the first k heads: a contiguous slice, one gemv
                y = F.linear(h, weight.view(-1, d)[: k * dl], bias.view(-1)[: k * dl]).view(k, dl)
            else:
                y = torch.baddbmm(bias[:k, None], x[:, None], weight[:k].transpose(1, 2))[:, 0]  # [K, Dl]
            x = x + F.silu(self.comm.all_gather_last(y))  # column-parallel, gather_output=True
        if w.heads_share_lm:  # every head projects with the base lm_head: one product over the K rows
            logits = linear(x, w.lm_head).float()  # [K, Vl]
        elif w.heads_lm is not None:  # bfloat16: one packed product per head (``weights._medusa_lm_heads``)
            logits = torch.cat([linear(x[j : j + 1], w.heads_lm[j]) for j in range(k)]).float()  # [K, Vl]
        else:
            assert w.heads_lm_t is not None
            logits = torch.bmm(x[:, None], w.heads_lm_t[:k])[:, 0].float()  # [K, Vl]
        return self.gather_vocab(logits, w.head_rows)

    def gather_vocab(self, local: torch.Tensor, rows: list[int]) -> torch.Tensor | None:
        full = self.comm.gather_last(local, rows)
        return None if full is None else full[..., : self.info.vocab_size]
