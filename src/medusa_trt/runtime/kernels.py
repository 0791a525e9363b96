"""The matmul kernel of the trunk's linear layers: oneDNN with weights prepacked once, on CPU.

``F.linear`` on CPU runs float32 through MKL's sgemm, which treats a block of a few rows (a Medusa
verification step: 2-64 tree tokens) as a general matrix product and costs about twice one row, while
a single row (a plain step) takes a fast matrix-vector path. oneDNN's inner product over a weight
reordered once into its blocked layout costs about the same for 1 and 6 rows, less than MKL's for 6
(float32 and bfloat16; ``benchmarks/linear_kernels.py``). It is the kernel torch's own CPU compiler (Inductor, with frozen
weights) emits for a linear layer: ``mkldnn._reorder_linear_weight`` at load, then
``mkldnn._linear_pointwise`` per call (pytorch/pytorch ``torch/_inductor/fx_passes/mkldnn_fusion.py``).

Those are private ops: ``pack`` checks them on the weight it packs and keeps the plain tensor
whenever they are missing, raise, or disagree with ``F.linear`` (another build, another device, a
dtype oneDNN does not handle here); ``linear`` takes either kind.
"""

from __future__ import annotations

from typing import TypeAlias

# torch at module level is fine here: runtime modules load only inside commands that compute.
import torch
import torch.nn.functional as F

PACKED_DTYPES = (torch.float32, torch.bfloat16)
BATCH_HINT = 64  # rows oneDNN's layout is chosen for; 1..64 (plain steps to whole trees) all run well on it
# float32 shards up to this size also keep the plain weights, for single rows (see ``Packed``)
TWIN_MAX_BYTES = 512 * 2**20
PAD_ROWS = 4  # fewer bfloat16 rows run as the first of this many (``_padded``)


class Packed:
    """A linear weight [out, in] in oneDNN's blocked layout (``onednn``, an opaque ``torch._mkldnn`` tensor),
    and, where asked, the plain tensor too (``plain``): a single float32 row (a plain decoding step) then
    keeps MKL's matrix-vector kernel, so the plain step does not change (inside real generations the two
    kernels measured alike for one row, within a shared machine's noise; oneDNN wins from two rows on).
    The twin doubles the weights' memory, so only small float32 shards keep it (``TWIN_MAX_BYTES``); in
    bfloat16 oneDNN was faster for one row too."""

    __slots__ = ("dtype", "onednn", "plain", "shape")

    def __init__(self, onednn: torch.Tensor, plain: torch.Tensor | None) -> None:
        self.onednn, self.plain = onednn, plain
        self.shape, self.dtype = onednn.shape, onednn.dtype


Weight: TypeAlias = "torch.Tensor | Packed"


def pack(w: torch.Tensor, *, twin: bool = False) -> Weight:
    """``w`` [out, in] as a :class:`Packed` (with the plain tensor kept when ``twin``), or ``w`` itself
    where oneDNN is not available or does not compute what ``F.linear`` does."""
    usable = w.device.type == "cpu" and w.dtype in PACKED_DTYPES and w.dim() == 2
    if not usable or not torch.backends.mkldnn.is_available():
        return w
    try:
        packed = torch.ops.mkldnn._reorder_linear_weight(w, BATCH_HINT)
        probe = torch.linspace(-1, 1, 2 * w.shape[1], dtype=w.dtype).view(2, -1)  # [2, in]
        got = torch.ops.mkldnn._linear_pointwise(probe, packed, None, "none", [], "")
    except (AttributeError, RuntimeError):  # an older build, or no oneDNN kernel for this case
        return w
    want = F.linear(probe, w).float()
    tol = (1e-4 if w.dtype == torch.float32 else 2e-2) * (float(want.abs().max()) + 1e-6)
    if got.shape != want.shape or float((got.float() - want).abs().max()) > tol:
        return w
    return Packed(packed, w if twin else None)


def linear(x: torch.Tensor, w: Weight) -> torch.Tensor:
    """``x @ w.T``: x [.., in], w [out, in] plain or from ``pack``; [.., out]."""
    if not isinstance(w, Packed):
        return F.linear(x, w)
    rows = x.numel() // x.shape[-1]
    if rows == 1 and w.plain is not None:
        return F.linear(x, w.plain)
    if 0 < rows < PAD_ROWS and w.dtype == torch.bfloat16:
        return _padded(x, w, rows)
    return torch.ops.mkldnn._linear_pointwise(x, w.onednn, None, "none", [], "")


def _padded(x: torch.Tensor, w: Packed, rows: int) -> torch.Tensor:
    """A few bfloat16 rows x [.., in] as the first of ``PAD_ROWS`` rows: oneDNN's packed product over 4
    rows reads a large weight faster than over 1 or 2 (a plain step 13-21% faster on Llama 3.1 8B's
    shapes on an AVX-512 CPU, ``benchmarks/step_cost.py --pad-ab``); the zero rows are dropped. [.., out]."""
    block = x.new_zeros(PAD_ROWS, x.shape[-1])  # [P, in]
    block[:rows] = x.reshape(rows, -1)
    out = torch.ops.mkldnn._linear_pointwise(block, w.onednn, None, "none", [], "")[:rows]  # [rows, out]
    return out.view(*x.shape[:-1], out.shape[-1])
