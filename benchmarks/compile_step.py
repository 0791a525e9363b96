"""Does torch's own compiler make a decoding step cheaper on CPU? Eager vs torch.compile vs AOTInductor.

    python benchmarks/compile_step.py [CKPT] [--variants eager,compile,...] [--steps 100] [--rounds 5]
    python benchmarks/compile_step.py --model-8b [--layers 2] [--variants eager,compile]

Times one plain (1-row) step and one step over a fixed 5-node tree (6 rows) after a ``--context``-token
prompt, for each variant, on one checkpoint (default: the engine ``medusa-trt demo`` leaves in its
default cache dir), or on a random Llama 3.1 8B-shaped model with ``--layers`` layers in bfloat16
(``decode.py --curve-8b``'s).

Variants:

- ``eager``: ``LlamaShard.forward`` as the runtime runs it (oneDNN over prepacked weights,
  ``runtime.kernels``).
- ``eager-repacked``: the same over weights packed again after loading (a control: a frozen compile's
  weights are packed late too).
- ``compile`` / ``compile-autotune``: ``torch.compile`` of the runtime's own step (``LlamaShard._forward``),
  mode "default" / "max-autotune-no-cudagraphs", over the plain weights and ``F.linear`` (Inductor
  cannot lower the prepacked oneDNN tensors). The cache length changes every step, so the step
  compiles once per shape and then again with dynamic sizes (torch's automatic dynamic shapes).
- ``static-eager``: a fixed-shape step: it writes the new keys with ``index_copy_`` and attends the whole
  cache under a mask built in the graph from the length (a 0-d tensor), so one shape per tree size.
  Run eagerly, it shows what that formulation costs by itself.
- ``static-compile``: that step under ``torch.compile(dynamic=False)`` with Inductor's weight freezing
  (the weights become constants, which it prepacks for the CPU's GEMM itself).
- ``static-aoti``: that step exported (``torch.export``) and compiled ahead of time by AOTInductor
  (``torch._inductor.aoti_compile_and_package``, freezing on), loaded as a package: no Python tracing
  and no guards at run time.

Per variant and step kind: the median wall and this thread's CPU milliseconds per step over
``--rounds`` rounds of ``--steps`` steps, variants interleaved within each round (a load change hits all
alike), the load average printed with each round; the start cost: each compiling variant is started in a
fresh process twice over one new Inductor cache dir, cold (empty cache) and warm (a restart that finds
it), timing the load, the compilation and the first three calls of each step kind; and the outputs:
a greedy chain of ``--chain`` plain steps from the prompt (tokens equal to eager's, max |logit
difference|) and one tree step (its 6 rows' argmax equal to eager's, max |logit difference|).
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

TREE5 = [[0], [0, 0], [1], [0, 0, 0], [0, 0, 0, 0]]
VARIANTS = ("eager", "eager-repacked", "compile", "compile-autotune", "static-eager", "static-compile", "static-aoti")
COMPILED = ("compile", "compile-autotune", "static-compile", "static-aoti")


def plain_view(shard: Any) -> Any:
    """A shallow copy of ``shard`` (same KV cache) whose trunk weights are plain tensors for ``F.linear``:
    the float32 twins where every packed weight kept one, else the shard file read again unpacked."""
    from medusa_trt.runtime import kernels, weights

    def plain(w: Any) -> Any:
        return w.plain if isinstance(w, kernels.Packed) else w

    w = shard.w
    mats = [t for lw in w.layers for t in (lw.qkv, lw.dense, lw.fc_gate, lw.proj)] + [w.lm_head]
    if all(plain(t) is not None for t in mats):
        names = ("qkv", "dense", "fc_gate", "proj")
        layers = [dataclasses.replace(lw, **{k: plain(getattr(lw, k)) for k in names}) for lw in w.layers]
        w = dataclasses.replace(w, layers=layers, lm_head=plain(w.lm_head))
    else:  # bfloat16 or a large shard: no twins kept
        pack = kernels.pack
        kernels.pack = lambda t, twin=False: t  # load_shard calls kernels.pack: keep every weight plain
        try:
            w = weights.load_shard(shard.info, shard.rank, shard.device)
        finally:
            kernels.pack = pack
    view = copy.copy(shard)
    view.w = w
    return view


def static_step(view: Any, capacity: int) -> Any:
    """The fixed-shape step as a module over ``view``'s (plain) weights, with its own KV cache."""
    import torch
    import torch.nn.functional as F

    from medusa_trt.runtime.model import rms_norm, rotate

    class StaticStep(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            w = view.w
            self.n_q, self.n_kv, self.hd, self.eps = view.n_q, view.n_kv, view.hd, view.eps
            self.n_layers = len(w.layers)
            for name in ("embed", "ln_f", "lm_head"):
                self.register_buffer(name, getattr(w, name))
            for i, lw in enumerate(w.layers):
                for k in ("ln1", "qkv", "dense", "ln2", "fc_gate", "proj"):
                    self.register_buffer(f"l{i}_{k}", getattr(lw, k))
            view._rope_at(torch.arange(1), capacity)  # grows the shard's table to ``capacity`` positions
            self.register_buffer("rope", view._rope_cs[:, :capacity].clone())  # [2, cap, hd]
            shape = (self.n_layers, 2, view.n_kv, capacity, view.hd)
            self.register_buffer("cache", torch.zeros(shape, dtype=view.dtype))
            self.register_buffer("slots", torch.arange(capacity))

        def forward(self, ids: torch.Tensor, pos: torch.Tensor, n: torch.Tensor, tree: torch.Tensor) -> torch.Tensor:
            """ids, pos [T] at cache slots n..n+T-1 (n a 0-d tensor), tree [T, T] bool -> logits [T, V]."""
            t = ids.shape[0]
            x = self.embed[ids]  # [T, D]
            cs = self.rope[:, pos, None]  # [2, T, 1, hd]
            rel = self.slots - n  # [cap]: a key's slot relative to the first new one
            inside = (rel >= 0) & (rel < t)
            seen = (rel < 0)[None] | (inside[None] & tree[:, rel.clamp(0, t - 1)])  # [T, cap]
            bias = torch.zeros(seen.shape, dtype=x.dtype).masked_fill(~seen, float("-inf"))
            where = n + torch.arange(t)  # [T]
            for i in range(self.n_layers):
                lw = {k: getattr(self, f"l{i}_{k}") for k in ("ln1", "qkv", "dense", "ln2", "fc_gate", "proj")}
                qkv = F.linear(rms_norm(x, lw["ln1"], self.eps), lw["qkv"]).unflatten(-1, (-1, self.hd))
                qk = rotate(qkv[:, : self.n_q + self.n_kv], cs[0], cs[1]).transpose(0, 1)  # [Hl + KVl, T, hd]
                v = qkv[:, self.n_q + self.n_kv :].transpose(0, 1)  # [KVl, T, hd]
                self.cache[i, 0].index_copy_(1, where, qk[self.n_q :])
                self.cache[i, 1].index_copy_(1, where, v)
                o = F.scaled_dot_product_attention(
                    qk[None, : self.n_q],
                    self.cache[i, 0][None],
                    self.cache[i, 1][None],
                    attn_mask=bias,
                    enable_gqa=self.n_q != self.n_kv,
                )  # [1, Hl, T, hd]
                x = x + F.linear(o[0].transpose(0, 1).flatten(-2), lw["dense"])
                fc, gate = F.linear(rms_norm(x, lw["ln2"], self.eps), lw["fc_gate"]).chunk(2, dim=-1)
                x = x + F.linear(F.silu(fc) * gate, lw["proj"])
            return F.linear(rms_norm(x, self.ln_f, self.eps), self.lm_head).float()  # [T, V]

    module = StaticStep().eval()
    module.cache.copy_(view.cache[:, :, :, :capacity])  # the prompt's keys and values
    return module


class Setup:
    """One loaded checkpoint with its prompt prefilled: ``n0`` cached positions, ``first`` the next token."""

    def __init__(self, ckpt: str, context: int, capacity: int) -> None:
        import torch

        from medusa_trt.medusa.buffers import build_buffers
        from medusa_trt.runtime import load_engine

        self.engine = load_engine(ckpt, adapt=False)  # its own tree: the steps here use the trunk alone
        self.shard = self.engine._runner.model
        self.capacity = capacity
        self.shard.alloc(capacity)
        prompt = torch.tensor([(i * 17) % 300 + 3 for i in range(context)])
        logits = self.shard.forward(prompt, torch.arange(context), pos_bound=context, last=True)
        self.n0, self.first = context, int(logits[0].argmax())
        buf = build_buffers(TREE5)
        self.tree_mask, self.tree_pos = buf.attn_mask, buf.position_ids  # [T, T] bool, [T]
        self.tree_ids = torch.tensor([self.first] + [(7 * j) % 300 + 3 for j in range(len(TREE5))])
        self._view: Any = None

    def view(self) -> Any:
        if self._view is None:
            self._view = plain_view(self.shard)
        return self._view


def repacked(setup: Setup) -> Any:
    """A shallow copy of the shard whose trunk weights are packed again now (``runtime.kernels.pack``, the
    twins as loaded): the same kernels as eager over weights allocated late, as a frozen compile's are."""
    import dataclasses

    from medusa_trt.runtime import kernels

    plain, w = setup.view(), setup.shard.w
    twin = any(isinstance(t, kernels.Packed) and t.plain is not None for t in [w.lm_head, w.layers[0].qkv])

    def pack(t: Any) -> Any:
        return kernels.pack(t, twin=twin)

    names = ("qkv", "dense", "fc_gate", "proj")
    layers = [dataclasses.replace(lw, **{k: pack(getattr(lw, k)) for k in names}) for lw in plain.w.layers]
    view = copy.copy(setup.shard)
    view.w = dataclasses.replace(w, layers=layers, lm_head=pack(plain.w.lm_head))
    return view


def make_step(setup: Setup, variant: str, work: Path) -> Any:
    """``step(ids [T], pos [T], tree [T, T] | None, n) -> logits [T, V]`` for ``variant``, at cache slot n."""
    import torch

    if variant.startswith(("eager", "compile")):
        shard = setup.shard if variant == "eager" else repacked(setup) if variant == "eager-repacked" else setup.view()
        if variant.startswith("compile"):
            mode = "max-autotune-no-cudagraphs" if variant == "compile-autotune" else "default"
            shard._forward = torch.compile(shard._forward, mode=mode)  # an instance attribute: forward calls it

        def step(ids: torch.Tensor, pos: torch.Tensor, tree: torch.Tensor | None, n: int) -> torch.Tensor:
            shard.length = n
            return shard.forward(ids, pos, tree, pos_bound=n + ids.shape[0])

        return step
    module = static_step(setup.view(), setup.capacity)
    one = torch.ones(1, 1, dtype=torch.bool)
    if variant == "static-eager":
        fn = module
    elif variant == "static-compile":
        fn = frozen(torch.compile(module, dynamic=False), setup, one)
    else:
        fn = aoti(module, setup, work, one)

    def static(ids: torch.Tensor, pos: torch.Tensor, tree: torch.Tensor | None, n: int) -> torch.Tensor:
        length = torch.tensor(n)  # outside inference mode: a compiled step's guards expect a normal tensor
        with torch.inference_mode():
            return fn(ids, pos, length, one if tree is None else tree)

    return static


def frozen(fn: Any, setup: Setup, one: Any) -> Any:
    """``fn`` compiled for both shapes now, with Inductor's weight freezing: the weights become constants,
    which it prepacks for the CPU's GEMM (MKL's packed sgemm in float32). Compilation is lazy, and
    ``torch.compile(options={"freezing": True})`` does not reach it, so the config is patched around the
    first call of each shape; the shapes are fixed, so nothing compiles again."""
    import torch
    import torch._inductor.config as inductor_config

    n, pos = torch.tensor(setup.n0), setup.tree_pos + setup.n0  # made outside inference mode, as the steps'
    with inductor_config.patch(freezing=True), torch.inference_mode():
        fn(setup.tree_ids[:1], pos[:1], n, one)
        fn(setup.tree_ids, pos, n, setup.tree_mask)
    return fn


def aoti(module: Any, setup: Setup, work: Path, one: Any) -> Any:
    """The fixed-shape step exported and compiled by AOTInductor, one package per tree size (loaded from
    ``work`` when a previous start left it there); calls go to the package for the shape at hand."""
    import torch
    from torch._inductor import aoti_compile_and_package, aoti_load_package

    runners = {}
    for t, tree, pos in ((1, one, torch.tensor([setup.n0])), (len(TREE5) + 1, setup.tree_mask, setup.tree_pos)):
        path = work / f"step-t{t}.pt2"
        if not path.exists():
            args = (setup.tree_ids[:t], pos + (setup.n0 if t > 1 else 0), torch.tensor(setup.n0), tree)
            with torch.no_grad():
                program = torch.export.export(module, args)
            aoti_compile_and_package(program, package_path=str(path), inductor_configs={"freezing": True})
        runners[t] = aoti_load_package(str(path))

    def call(ids: Any, pos: Any, n: Any, tree: Any) -> Any:
        return runners[ids.shape[0]](ids, pos, n, tree)

    return call


def warm_up(setup: Setup, step: Any, calls: int = 3) -> None:
    """``calls`` plain and tree steps: a compiling variant compiles (and recompiles for new sizes) here."""
    for i in range(calls):
        step(setup.tree_ids[:1], setup.tree_pos[:1] + setup.n0 + i, None, setup.n0 + i)
        step(setup.tree_ids, setup.tree_pos + setup.n0 + i, setup.tree_mask, setup.n0 + i)


def start_cost(a: argparse.Namespace, variant: str, cache: Path) -> dict[str, float]:
    """A fresh process loading ``a.ckpt``, compiling ``variant`` and making its first calls; Inductor's
    cache (and the AOTInductor packages) in ``cache``. Seconds for the load and for the rest."""
    env = dict(os.environ, TORCHINDUCTOR_CACHE_DIR=str(cache / "inductor"))
    cmd = [sys.executable, __file__, a.ckpt, "--start", variant, "--work", str(cache), "--context", str(a.context)]
    cmd += ["--threads", str(a.threads), "--steps", str(a.steps)]
    out = subprocess.run(cmd, env=env, capture_output=True, text=True, check=False)
    if out.returncode:
        return {"error": out.stderr.strip().splitlines()[-1] if out.stderr.strip() else f"exit {out.returncode}"}
    return json.loads(out.stdout.strip().splitlines()[-1])


def start_only(a: argparse.Namespace) -> int:
    import torch

    t0 = time.perf_counter()
    setup = Setup(a.ckpt, a.context, a.context + a.steps + 8)
    t1 = time.perf_counter()
    step = make_step(setup, a.start, Path(a.work))
    warm_up(setup, step)
    t2 = time.perf_counter()
    setup.engine.close()
    print(json.dumps({"load_s": t1 - t0, "compile_and_first_calls_s": t2 - t1, "threads": torch.get_num_threads()}))
    return 0


def outputs(setup: Setup, step: Any, chain: int) -> dict[str, Any]:
    """A greedy chain of ``chain`` plain steps from the prompt (tokens, logits [chain, V]) and one tree step."""
    import torch

    tok, tokens, rows = setup.first, [], []
    for i in range(chain):
        n = setup.n0 + i
        logits = step(torch.tensor([tok]), torch.tensor([n]), None, n)[0]  # [V]
        tok = int(logits.argmax())
        tokens.append(tok)
        rows.append(logits)
    tree = step(setup.tree_ids, setup.tree_pos + setup.n0, setup.tree_mask, setup.n0)  # [6, V]
    return {"tokens": tokens, "logits": torch.stack(rows), "tree": tree.clone()}


def timed(setup: Setup, step: Any, tree: bool, steps: int) -> tuple[list[float], list[float]]:
    """Wall and thread-CPU milliseconds of ``steps`` steps: plain steps advancing from the prompt, or tree
    steps each verifying the same 5 nodes after it."""
    import torch

    walls, cpus = [], []
    ids, pos, mask = setup.tree_ids, setup.tree_pos + setup.n0, setup.tree_mask
    for i in range(steps):
        n = setup.n0 + (0 if tree else i)
        args = (ids, pos, mask, n) if tree else (ids[:1], torch.tensor([n]), None, n)
        c0, w0 = time.thread_time(), time.perf_counter()
        step(*args)
        walls.append(1e3 * (time.perf_counter() - w0))
        cpus.append(1e3 * (time.thread_time() - c0))
    return walls, cpus


def profile(setup: Setup, step: Any, steps: int) -> dict[str, list[tuple[str, float]]]:
    """The torch profiler's top ops by self CPU time over ``steps`` steps of each kind: (op, ms per step)."""
    from torch.profiler import ProfilerActivity
    from torch.profiler import profile as torch_profile

    out = {}
    for kind in ("plain", "tree5"):
        with torch_profile(activities=[ProfilerActivity.CPU]) as prof:
            timed(setup, step, kind == "tree5", steps)
        ops = sorted(prof.key_averages(), key=lambda e: -e.self_cpu_time_total)[:8]
        out[kind] = [(e.key[:60], e.self_cpu_time_total / 1e3 / steps) for e in ops]
    return out


def measure(a: argparse.Namespace) -> dict[str, Any]:
    import torch

    if a.threads:
        torch.set_num_threads(a.threads)
    variants = [v for v in a.variants.split(",") if v]
    unknown = set(variants) - set(VARIANTS)
    if unknown or "eager" not in variants:
        raise SystemExit(f"--variants: known {', '.join(VARIANTS)}; eager is required (got {a.variants})")
    work = Path(a.work)
    doc: dict[str, Any] = {"ckpt": a.ckpt, "threads": torch.get_num_threads(), "context": a.context, "start": {}}
    for v in variants:
        if v in COMPILED and a.start_rounds:
            cache = work / f"start-{v}"
            doc["start"][v] = [start_cost(a, v, cache) for _ in range(a.start_rounds)]  # cold, then warm
            print(f"start {v}: {doc['start'][v]}  (load {os.getloadavg()[0]:.1f})", flush=True)
    setup = Setup(a.ckpt, a.context, a.context + max(a.steps, a.chain) + 8)
    steps: dict[str, Any] = {}
    compile_s: dict[str, float] = {}
    for v in variants:
        os.environ["TORCHINDUCTOR_CACHE_DIR"] = str(work / f"start-{v}" / "inductor")  # the starts' (warm)
        t0 = time.perf_counter()
        steps[v] = make_step(setup, v, work / f"start-{v}")
        warm_up(setup, steps[v])
        compile_s[v] = time.perf_counter() - t0
    doc["in_process_start_s"] = compile_s
    ref = outputs(setup, steps["eager"], a.chain)
    doc["outputs"] = {}
    for v in variants:
        got = outputs(setup, steps[v], a.chain)
        same = [x == y for x, y in zip(got["tokens"], ref["tokens"], strict=True)] + [False]
        doc["outputs"][v] = {
            "chain_identical": got["tokens"] == ref["tokens"],
            "chain_tokens_before_first_difference": same.index(False),
            "logit_scale": float(ref["logits"].abs().max()),
            "chain_max_abs_diff": float((got["logits"] - ref["logits"]).abs().max()),
            "tree_argmax_identical": bool((got["tree"].argmax(-1) == ref["tree"].argmax(-1)).all()),
            "tree_max_abs_diff": float((got["tree"] - ref["tree"]).abs().max()),
        }
    samples: dict[tuple[str, str], tuple[list[float], list[float]]] = {}
    doc["loads"] = []
    for r in range(a.rounds):
        order = variants[r % len(variants) :] + variants[: r % len(variants)]  # rotate who goes first
        for v in order:
            for kind in ("plain", "tree5"):
                w, c = timed(setup, steps[v], kind == "tree5", a.steps)
                sw, sc = samples.setdefault((v, kind), ([], []))
                sw += w
                sc += c
        doc["loads"].append(os.getloadavg()[0])
        print(f"round {r + 1}/{a.rounds} done, load {doc['loads'][-1]:.2f}", file=sys.stderr, flush=True)
    if a.profile:
        doc["profile"] = {v: profile(setup, steps[v], a.profile) for v in variants}
    doc["ms"] = {
        v: {
            k: {"wall": statistics.median(samples[v, k][0]), "cpu": statistics.median(samples[v, k][1])}
            for k in ("plain", "tree5")
        }
        for v in variants
    }
    setup.engine.close()
    return doc


def report(doc: dict[str, Any]) -> None:
    print(f"{doc['ckpt']}: {doc['threads']} threads, {doc['context']}-token context, 5-node tree {TREE5}")
    print(f"loads per round {', '.join(f'{x:.2f}' for x in doc['loads'])}")
    head = f"{'variant':<18}{'plain ms':>10}{'(cpu)':>8}{'tree5 ms':>10}{'(cpu)':>8}{'tree/plain':>11}"
    print(head + f"{'vs eager':>10}  {'start cold / warm s':<22}{'outputs'}")
    base = doc["ms"]["eager"]
    for v, ms in doc["ms"].items():
        p, t = ms["plain"], ms["tree5"]
        starts = doc["start"].get(v, [])
        start = (
            " / ".join(f"{s['compile_and_first_calls_s']:.1f}" if "error" not in s else "failed" for s in starts)
            or f"{doc['in_process_start_s'][v]:.1f} (in process)"
        )
        o = doc["outputs"][v]
        same = "identical" if o["chain_identical"] else f"first {o['chain_tokens_before_first_difference']} same"
        same += ", tree argmax " + ("identical" if o["tree_argmax_identical"] else "DIFFERENT")
        print(
            f"{v:<18}{p['wall']:>10.3f}{p['cpu']:>8.3f}{t['wall']:>10.3f}{t['cpu']:>8.3f}{t['wall'] / p['wall']:>11.2f}"
            f"{p['wall'] / base['plain']['wall']:>5.2f}/{t['wall'] / base['tree5']['wall']:.2f}  {start:<22}"
            f"{same}, max |dlogit| {max(o['chain_max_abs_diff'], o['tree_max_abs_diff']):.1e}"
            f" of {o['logit_scale']:.1f}"
        )
    for v, kinds in doc.get("profile", {}).items():
        for kind, ops in kinds.items():
            print(f"  {v} {kind}, self CPU ms per step: " + ", ".join(f"{k} {ms:.2f}" for k, ms in ops))
    for v, starts in doc["start"].items():
        for s in starts:
            if "error" in s:
                print(f"  {v} failed to start: {s['error']}")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("ckpt", nargs="?", default=None, help="checkpoint or engine dir (default: the demo's engine)")
    p.add_argument("--model-8b", action="store_true", help="a random Llama 3.1 8B-shaped model instead")
    p.add_argument("--layers", type=int, default=2, help="with --model-8b")
    p.add_argument("--seed", type=int, default=0, help="with --model-8b")
    p.add_argument("--variants", default=",".join(VARIANTS))
    p.add_argument("--steps", type=int, default=100, help="steps of each kind per variant per round")
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--chain", type=int, default=64, help="greedy plain steps compared with eager")
    p.add_argument("--context", type=int, default=40)
    p.add_argument("--threads", type=int, default=1, help="torch threads (0: torch's default)")
    p.add_argument("--start-rounds", type=int, default=2, help="fresh-process starts per compiling variant")
    p.add_argument("--profile", type=int, default=0, help="then profile N steps of each kind per variant")
    p.add_argument("--json", action="store_true")
    p.add_argument("--start", default=None, help=argparse.SUPPRESS)  # internal: one start, timed
    p.add_argument("--work", default=None, help=argparse.SUPPRESS)
    a = p.parse_args(argv)
    if a.start:
        import torch

        if a.threads:
            torch.set_num_threads(a.threads)
        return start_only(a)
    if a.ckpt is None and not a.model_8b:
        from medusa_trt.demo.pipeline import default_cache_dir

        a.ckpt = str(default_cache_dir() / "engine")
        if not Path(a.ckpt).is_dir():
            raise SystemExit(f"{a.ckpt} is missing: run `medusa-trt demo` first, or give a checkpoint")
    with tempfile.TemporaryDirectory(prefix="compile-step-") as tmp:
        a.work = tmp
        if a.model_8b:
            sys.path.insert(0, str(Path(__file__).parent))
            from decode import build_8b_shaped

            (Path(tmp) / "8b").mkdir()
            a.ckpt = str(build_8b_shaped(Path(tmp) / "8b", a))
        doc = measure(a)
    if a.json:
        print(json.dumps(doc, indent=2))
    else:
        report(doc)
    return 0


if __name__ == "__main__":
    sys.exit(main())
