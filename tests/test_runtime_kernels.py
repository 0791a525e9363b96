"""The trunk's linear kernel (``runtime.kernels``): weights prepacked for oneDNN compute what ``F.linear``
computes, for a plain step's one row, a tree step's few and a prefill's many; a twin sends one row to
the plain weight; what cannot be packed stays a plain tensor; a loaded engine runs on the packed weights (its logits against transformers':
tests/test_runtime_logits.py)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from medusa_trt.runtime import kernels, load_engine
from tests.helpers.checkpoints import make_checkpoint

ONEDNN = torch.backends.mkldnn.is_available()


@pytest.mark.skipif(not ONEDNN, reason="this torch build has no oneDNN")
@pytest.mark.parametrize(("dtype", "tol"), [(torch.float32, 1e-5), (torch.bfloat16, 2e-2)])
@pytest.mark.parametrize("rows", [(1,), (6,), (150,), (3, 6)])
def test_packed_weight_computes_what_f_linear_does(dtype: torch.dtype, tol: float, rows: tuple[int, ...]) -> None:
    g = torch.Generator().manual_seed(0)
    w = (torch.randn(96, 64, generator=g) * 0.1).to(dtype)
    x = torch.randn(*rows, 64, generator=g).to(dtype)
    packed = kernels.pack(w)
    assert isinstance(packed, kernels.Packed) and packed.plain is None and packed.shape == w.shape
    got, want = kernels.linear(x, packed), F.linear(x, w)
    assert got.shape == want.shape == (*rows, 96) and got.dtype == dtype
    assert float((got.float() - want.float()).abs().max()) <= tol * float(want.float().abs().max())


@pytest.mark.skipif(not ONEDNN, reason="this torch build has no oneDNN")
def test_a_twin_sends_one_row_to_the_plain_weight_and_more_to_onednn() -> None:
    w, x = torch.randn(96, 64), torch.randn(6, 64)
    twin = kernels.pack(w, twin=True)
    assert isinstance(twin, kernels.Packed) and twin.plain is w
    assert torch.equal(kernels.linear(x[:1], twin), F.linear(x[:1], w))  # the very same kernel
    assert torch.equal(kernels.linear(x[None, None, :1], twin), F.linear(x[None, None, :1], w))
    onednn = torch.ops.mkldnn._linear_pointwise(x, twin.onednn, None, "none", [], "")
    assert torch.equal(kernels.linear(x, twin), onednn)


@pytest.mark.skipif(not ONEDNN, reason="this torch build has no oneDNN")
@pytest.mark.parametrize("shape", [(64,), (1, 64), (1, 1, 64), (2, 64), (3, 64), (1, 3, 64)])
def test_fewer_bfloat16_rows_run_as_the_first_of_a_few(shape: tuple[int, ...]) -> None:
    """1-3 bfloat16 rows go through oneDNN's 4-row product (zeros below them), in their own shape."""
    g = torch.Generator().manual_seed(1)
    w = (torch.randn(96, 64, generator=g) * 0.1).bfloat16()
    x = torch.randn(shape, generator=g).bfloat16()
    packed = kernels.pack(w)
    assert isinstance(packed, kernels.Packed) and packed.plain is None
    n = x.numel() // 64
    block = torch.cat([x.reshape(n, 64), torch.zeros(kernels.PAD_ROWS - n, 64, dtype=torch.bfloat16)])
    few = torch.ops.mkldnn._linear_pointwise(block, packed.onednn, None, "none", [], "")  # [P, 96]
    got = kernels.linear(x, packed)
    assert got.shape == (*shape[:-1], 96) and torch.equal(got.reshape(n, 96), few[:n])
    want = F.linear(x.float(), w.float())
    assert float((got.float() - want).abs().max()) <= 2e-2 * float(want.abs().max())


@pytest.mark.skipif(not ONEDNN, reason="this torch build has no oneDNN")
def test_no_rows_give_no_rows() -> None:
    packed = kernels.pack((torch.randn(96, 64) * 0.1).bfloat16())
    assert kernels.linear(torch.zeros(0, 64, dtype=torch.bfloat16), packed).shape == (0, 96)


@pytest.mark.skipif(not ONEDNN, reason="this torch build has no oneDNN")
def test_a_strided_input_is_fine() -> None:
    """The attention output reaches ``dense`` as a reshaped view; chunks of fc+gate are strided."""
    w = torch.randn(32, 48)
    x = torch.randn(48, 5).t()  # [5, 48], not contiguous
    assert torch.allclose(kernels.linear(x, kernels.pack(w)), F.linear(x, w), atol=1e-5)


@pytest.mark.parametrize(
    "w",
    [torch.randn(8, 4).half(), torch.randn(2, 8, 4), torch.randn(8, 4, dtype=torch.float64)],
    ids=["float16", "3-d", "float64"],
)
def test_what_cannot_be_packed_stays_plain(w: torch.Tensor) -> None:
    assert kernels.pack(w) is w
    if w.dim() == 2:
        x = torch.randn(3, 4, dtype=w.dtype)
        assert torch.equal(kernels.linear(x, w), F.linear(x, w))


@pytest.mark.skipif(not ONEDNN, reason="this torch build has no oneDNN")
@pytest.mark.parametrize(("dtype", "twin"), [("float32", True), ("bfloat16", False)])
def test_an_engine_runs_on_packed_weights(tiny_llama: Path, tmp_path: Path, dtype: str, twin: bool) -> None:
    """A tiny float32 shard is far below TWIN_MAX_BYTES: every trunk weight keeps its twin; bfloat16 never."""
    with load_engine(make_checkpoint(tiny_llama, tmp_path / "ckpt", dtype=dtype)) as engine:
        w = engine._runner.model.w
        trunk = [t for lw in w.layers for t in (lw.qkv, lw.dense, lw.fc_gate, lw.proj)] + [w.lm_head]
        assert all(isinstance(t, kernels.Packed) and (t.plain is not None) == twin for t in trunk)
        assert not isinstance(w.embed, kernels.Packed)  # the lookup reads rows: never packed
