"""The trunk's linear layers on one checkpoint: ``F.linear`` against oneDNN over prepacked weights.

    python benchmarks/linear_kernels.py CKPT [--rows 1,6,16,64] [--rounds 5] [--threads 1]
    python benchmarks/linear_kernels.py --shape 8b [--layers 1]   # random bfloat16 weights, Llama 3.1 8B's shapes

Runs every linear layer of the checkpoint's trunk (each layer's qkv, dense, fc+gate, proj, then the
lm_head) over an input of R rows, in order, as one decoding step does (so each weight comes from
wherever the previous step's pass left it, not from a hot cache): with the plain weights through
``F.linear`` (MKL on x86 torch builds) and with the weights the runtime loads (``runtime.kernels.pack``,
oneDNN's blocked layout). Prints this thread's CPU milliseconds per pass, best of ``--rounds`` (the two
kernels alternate), and each kernel's cost for R rows over its cost for one row (a plain step feeds 1
row, a 5-node tree step 6).
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from typing import Any


def weights(ckpt: str) -> list[tuple[Any, Any]]:
    """(plain, packed) for every trunk linear weight of rank 0, in the order a forward uses them."""
    import torch

    from medusa_trt.runtime import kernels
    from medusa_trt.runtime.config import read_checkpoint
    from medusa_trt.runtime.weights import DTYPES, _read_state

    info = read_checkpoint(ckpt)
    state = _read_state(info.ckpt_dir / "rank0.safetensors")
    dtype = DTYPES[info.dtype]
    names = []
    for i in range(info.num_layers):
        p = f"transformer.layers.{i}."
        names += [p + "attention.qkv.weight", p + "attention.dense.weight", p + "mlp.fc", p + "mlp.proj.weight"]
    names.append("lm_head.weight" if "lm_head.weight" in state else "transformer.vocab_embedding.weight")
    out = []
    for n in names:
        if n.endswith("mlp.fc"):
            w = torch.cat([state[n + ".weight"], state[n.removesuffix("fc") + "gate.weight"]]).to(dtype).contiguous()
        else:
            w = state[n].to(dtype).contiguous()
        out.append((w, kernels.pack(w)))
    return out


def weights_8b(layers: int) -> list[tuple[Any, Any]]:
    """Random bfloat16 weights with Llama 3.1 8B's shapes: ``layers`` layers, then the lm_head."""
    import torch

    from medusa_trt.runtime import kernels

    d, i, kv, vocab = 4096, 14336, 1024, 128256
    g = torch.Generator().manual_seed(0)
    shapes = [(d + 2 * kv, d), (d, d), (2 * i, d), (d, i)] * layers + [(vocab, d)]
    out = []
    for shape in shapes:
        w = (torch.randn(*shape, generator=g) * 0.02).to(torch.bfloat16)
        out.append((w, kernels.pack(w)))
    return out


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("ckpt", nargs="?", help="a checkpoint or engine directory")
    p.add_argument("--shape", choices=["8b"], default=None, help="random weights of this shape instead of CKPT")
    p.add_argument("--layers", type=int, default=1, help="with --shape: decoder layers")
    p.add_argument("--rows", default="1,6,16,64")
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--passes", type=int, default=10, help="passes timed together in a round")
    p.add_argument("--threads", type=int, default=1, help="torch threads (0: torch's default)")
    a = p.parse_args()
    import torch
    import torch.nn.functional as F

    from medusa_trt.runtime import kernels

    if a.threads:
        torch.set_num_threads(a.threads)
    if (a.ckpt is None) == (a.shape is None):
        p.error("give CKPT or --shape")
    ws = weights(a.ckpt) if a.ckpt else weights_8b(a.layers)
    packed = sum(isinstance(q, kernels.Packed) for _, q in ws)
    print(f"{len(ws)} weights ({packed} packed), {ws[0][0].dtype}, threads {torch.get_num_threads()}")

    def plain(xs: list[Any]) -> None:
        for x, (w, _) in zip(xs, ws, strict=True):
            F.linear(x, w)

    def onednn(xs: list[Any]) -> None:
        for x, (_, q) in zip(xs, ws, strict=True):
            kernels.linear(x, q)

    best: dict[tuple[str, int], float] = {}
    rows = [int(r) for r in a.rows.split(",")]
    for r in rows:
        xs = [torch.randn(r, w.shape[1]).to(w.dtype) for w, _ in ws]
        for _ in range(a.rounds):
            for name, fn in (("F.linear", plain), ("oneDNN packed", onednn)):
                fn(xs)
                t0 = time.thread_time()
                for _ in range(a.passes):
                    fn(xs)
                ms = 1e3 * (time.thread_time() - t0) / a.passes
                best[name, r] = min(best.get((name, r), ms), ms)
    print(f"{'rows':>5}{'F.linear ms':>13}{'x 1 row':>9}{'oneDNN ms':>11}{'x 1 row':>9}{'oneDNN/F.linear':>17}")
    for r in rows:
        f, o = best["F.linear", r], best["oneDNN packed", r]
        f1, o1 = best["F.linear", rows[0]], best["oneDNN packed", rows[0]]
        print(f"{r:>5}{f:>13.3f}{f / f1:>9.2f}{o:>11.3f}{o / o1:>9.2f}{o / f:>17.2f}")
    print(f"load {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores")
    return 0


if __name__ == "__main__":
    sys.exit(main())
