"""Conversion throughput and peak RSS on a synthetic Llama-3.1-8B-shaped checkpoint.

Makes a random bf16 checkpoint with 8B shapes (full 128256x4096 embedding and lm_head, N decoder
layers; --layers 32 for the whole model), converts it at --tp 8 in a child process with the
converter's default flags (--workers only if given), and reports, side by side in one run:
  - convert throughput: bytes written / seconds (the call to convert_checkpoint, imports excluded);
  - copy throughput: `cp -r` of the source directory on the same disk, bytes / seconds;
  - the ratio of the two per written byte, and each one's user and system CPU seconds;
  - the same for `cp -r` repeated until it has written as many bytes as the conversion (a 10 GB
    write meets page-cache and writeback pressure that a 3 GB one does not);
  - the disk's direct-write ceiling: the same number of bytes written with O_DIRECT from memory by as
    many threads as files, no reading, no hashing (what no converter can beat on this disk);
  - peak RSS of the converting process (sampled every 20 ms).
With --baseline, also the data path of TensorRT-LLM's own Medusa converter with its default flags
(examples/medusa/convert_checkpoint.py: the whole model loaded through transformers'
`LlamaForCausalLM.from_pretrained(torch_dtype="auto")`, then, one rank after another (`--workers 1`),
the rank's tensors built with torch and written with `safetensors.torch.save_file`). TensorRT-LLM has no
wheel for this machine, so this is a re-implementation of that path on the same libraries, not
TensorRT-LLM itself: it shows how its time and memory scale, not its exact figures.
Several --layers values show how RSS grows with model size; --repeat runs each pair again (the
spread says how noisy the machine is). Everything is deleted afterwards unless --keep.

    .venv/bin/python benchmarks/convert.py --layers 1 2 4 --repeat 2 --dir /tmp/convert-bench

Disk: the output at tp 8 holds the embedding 8 times (8 x 1.05 GB) plus lm_head and layers (~0.44 GB
each at bf16): about 10 GB for 2 layers, 23 GB for 32.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

SHAPES = {
    "hidden_size": 4096,
    "intermediate_size": 14336,
    "num_attention_heads": 32,
    "num_key_value_heads": 8,
    "head_dim": 128,
}


def make_source(out: Path, layers: int, vocab: int) -> int:
    """A sharded bf16 HF Llama checkpoint with 8B shapes; one shard per layer keeps memory low."""
    import torch
    from safetensors.torch import save_file

    from medusa_trt.demo.tiny import llama_config_dict

    out.mkdir(parents=True)
    d, i, kv = SHAPES["hidden_size"], SHAPES["intermediate_size"], SHAPES["num_key_value_heads"] * SHAPES["head_dim"]
    g = torch.Generator().manual_seed(0)

    def rnd(*shape: int) -> torch.Tensor:
        return (torch.randn(*shape, generator=g, dtype=torch.float32) * 0.02).to(torch.bfloat16)

    shards: list[dict[str, torch.Tensor]] = [
        {"model.embed_tokens.weight": rnd(vocab, d)},
        {"lm_head.weight": rnd(vocab, d), "model.norm.weight": rnd(d)},
    ]
    for layer in range(layers):
        p = f"model.layers.{layer}."
        shards.append(
            {
                f"{p}self_attn.q_proj.weight": rnd(d, d),
                f"{p}self_attn.k_proj.weight": rnd(kv, d),
                f"{p}self_attn.v_proj.weight": rnd(kv, d),
                f"{p}self_attn.o_proj.weight": rnd(d, d),
                f"{p}mlp.gate_proj.weight": rnd(i, d),
                f"{p}mlp.up_proj.weight": rnd(i, d),
                f"{p}mlp.down_proj.weight": rnd(d, i),
                f"{p}input_layernorm.weight": rnd(d),
                f"{p}post_attention_layernorm.weight": rnd(d),
            }
        )
    weight_map: dict[str, str] = {}
    total = 0
    for n, shard in enumerate(shards):
        name = f"model-{n + 1:05d}-of-{len(shards):05d}.safetensors"
        save_file(shard, str(out / name), metadata={"format": "pt"})
        weight_map.update(dict.fromkeys(shard, name))
        total += (out / name).stat().st_size
        shard.clear()  # free this shard before generating the next
    (out / "model.safetensors.index.json").write_text(json.dumps({"metadata": {}, "weight_map": weight_map}))
    cfg = llama_config_dict(
        vocab_size=vocab,
        num_hidden_layers=layers,
        max_position_embeddings=131072,
        **{k: v for k, v in SHAPES.items() if k != "head_dim"},
    )
    cfg["torch_dtype"] = "bfloat16"
    (out / "config.json").write_text(json.dumps(cfg))
    return total


CHILD = """
import json, sys
from pathlib import Path
from medusa_trt.checkpoint import convert_checkpoint
src, out, tp, workers = sys.argv[1], Path(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4]) or None
r = convert_checkpoint(src, out, tp=tp, workers=workers, progress=False)
print(json.dumps({"bytes": r.bytes_written, "seconds": r.seconds}))
"""


BASELINE = """
import json, sys, time
from pathlib import Path
import torch
from safetensors.torch import save_file
from transformers import LlamaForCausalLM
src, out, tp = sys.argv[1], Path(sys.argv[2]), int(sys.argv[3])
t0 = time.perf_counter()
model = LlamaForCausalLM.from_pretrained(src, dtype="auto")  # the whole model, as upstream loads it
sd = model.state_dict()
cfg = model.config
hd = cfg.hidden_size // cfg.num_attention_heads
out.mkdir(parents=True)
written = 0
for r in range(tp):  # one worker: ranks in turn, each a dict of tensors then save_file
    part = lambda t, dim: torch.chunk(t, tp, dim)[r].contiguous()
    w = {"transformer.vocab_embedding.weight": sd["model.embed_tokens.weight"]}
    for i in range(cfg.num_hidden_layers):
        p, o = f"model.layers.{i}.", f"transformer.layers.{i}."
        qkv = [sd[p + f"self_attn.{n}_proj.weight"] for n in "qkv"]
        w[o + "attention.qkv.weight"] = torch.cat([part(t, 0) for t in qkv])
        w[o + "attention.dense.weight"] = part(sd[p + "self_attn.o_proj.weight"], 1)
        w[o + "mlp.fc.weight"] = part(sd[p + "mlp.up_proj.weight"], 0)
        w[o + "mlp.gate.weight"] = part(sd[p + "mlp.gate_proj.weight"], 0)
        w[o + "mlp.proj.weight"] = part(sd[p + "mlp.down_proj.weight"], 1)
        w[o + "input_layernorm.weight"] = sd[p + "input_layernorm.weight"]
        w[o + "post_layernorm.weight"] = sd[p + "post_attention_layernorm.weight"]
    w["lm_head.weight"] = part(sd["lm_head.weight"], 0)
    w["transformer.ln_f.weight"] = sd["model.norm.weight"]
    save_file(w, str(out / f"rank{r}.safetensors"))
    written += (out / f"rank{r}.safetensors").stat().st_size
print(json.dumps({"bytes": written, "seconds": time.perf_counter() - t0}))
"""


def child_cpu() -> tuple[float, float]:
    """(user, system) CPU seconds of all waited-for children so far."""
    ru = resource.getrusage(resource.RUSAGE_CHILDREN)
    return ru.ru_utime, ru.ru_stime


def convert_in_child(src: Path, out: Path, tp: int, workers: int | None, code: str = CHILD) -> dict[str, float]:
    """Convert in a fresh process (``code``: ours, or BASELINE), sampling its RSS every 20 ms for the peak.

    (The child's own ru_maxrss would include this parent's RSS at fork time, which exec keeps.)
    """
    import psutil

    cpu0 = child_cpu()
    proc = psutil.Popen(
        [sys.executable, "-c", code, str(src), str(out), str(tp), str(workers or 0)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    peak = 0
    while proc.poll() is None:
        try:
            peak = max(peak, proc.memory_info().rss)
        except psutil.NoSuchProcess:
            break
        time.sleep(0.02)
    stdout, stderr = proc.communicate()
    if proc.returncode != 0:
        raise SystemExit(f"convert failed:\n{stderr[-2000:]}")
    doc: dict[str, float] = json.loads(stdout.strip().splitlines()[-1])
    doc["peak_rss_mb"] = peak / 2**20
    cpu1 = child_cpu()
    doc["user_s"], doc["sys_s"] = cpu1[0] - cpu0[0], cpu1[1] - cpu0[1]
    return doc


def copy_throughput(src: Path, dst: Path, copies: int = 1) -> dict[str, float]:
    """`cp -r SRC DST` (``copies`` times, into DST-0, DST-1, ...), timed, then removed.

    One copy is what a user would compare the converter with; several copies write as many bytes
    as the conversion does, so both meet the same page-cache and writeback pressure.
    """
    total = sum(f.stat().st_size for f in src.iterdir()) * copies
    dsts = [dst] if copies == 1 else [dst.with_name(f"{dst.name}-{i}") for i in range(copies)]
    cpu0 = child_cpu()
    t0 = time.perf_counter()
    for d in dsts:
        subprocess.run(["cp", "-r", str(src), str(d)], check=True)
    seconds = time.perf_counter() - t0
    cpu1 = child_cpu()
    for d in dsts:
        shutil.rmtree(d)
    return {"bytes": total, "seconds": seconds, "user_s": cpu1[0] - cpu0[0], "sys_s": cpu1[1] - cpu0[1]}


def direct_write_ceiling(dst: Path, total: int, files: int) -> dict[str, float]:
    """``total`` bytes of zeros written with O_DIRECT into ``files`` files by as many threads, 8 MiB per
    write: the disk's own rate for this write pattern, with nothing read or hashed."""
    import mmap
    from concurrent.futures import ThreadPoolExecutor

    dst.mkdir()
    block = 8 << 20
    per_file = -(-total // files // block)

    def one(i: int) -> None:
        buf = mmap.mmap(-1, block)  # page-aligned, as O_DIRECT needs
        fd = os.open(dst / f"f{i}", os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_DIRECT, 0o644)
        try:
            for _ in range(per_file):
                os.write(fd, buf)
        finally:
            os.close(fd)
            buf.close()

    t0 = time.perf_counter()
    with ThreadPoolExecutor(files) as pool:
        list(pool.map(one, range(files)))
    seconds = time.perf_counter() - t0
    shutil.rmtree(dst)
    return {"bytes": per_file * block * files, "seconds": seconds}


def measure(src: Path, work: Path, layers: int, src_bytes: int, args: argparse.Namespace) -> dict[str, object]:
    """One `cp -r` of the source, one conversion, then `cp -r` as many times as it takes to write as
    many bytes as the conversion wrote, all on the same disk."""
    cp, out = work / f"copy-{layers}", work / f"out-{layers}"
    copy = copy_throughput(src, cp)
    conv = convert_in_child(src, out, args.tp, args.workers)
    shutil.rmtree(out)
    matched = copy_throughput(src, cp, copies=-(-int(conv["bytes"]) // src_bytes))
    ceiling = direct_write_ceiling(work / "ceiling", int(conv["bytes"]), args.tp)
    conv_rate, copy_rate = conv["bytes"] / conv["seconds"], copy["bytes"] / copy["seconds"]
    matched_rate = matched["bytes"] / matched["seconds"]
    ceiling_rate = ceiling["bytes"] / ceiling["seconds"]
    row: dict[str, object] = {
        "layers": layers,
        "tp": args.tp,
        "workers": args.workers or "default",
        "source_bytes": src_bytes,
        "convert_bytes": conv["bytes"],
        "convert_s": round(conv["seconds"], 2),
        "convert_MBps": round(conv_rate / 1e6, 1),
        "convert_cpu_s": {"user": round(conv["user_s"], 2), "sys": round(conv["sys_s"], 2)},
        "copy_s": round(copy["seconds"], 2),
        "copy_MBps": round(copy_rate / 1e6, 1),
        "copy_cpu_s": {"user": round(copy["user_s"], 2), "sys": round(copy["sys_s"], 2)},
        "ratio_vs_copy": round(conv_rate / copy_rate, 2),
        "copy_same_bytes_GB": round(matched["bytes"] / 1e9, 2),
        "copy_same_bytes_MBps": round(matched_rate / 1e6, 1),
        "copy_same_bytes_cpu_s": {"user": round(matched["user_s"], 2), "sys": round(matched["sys_s"], 2)},
        "ratio_vs_copy_same_bytes": round(conv_rate / matched_rate, 2),
        "direct_write_ceiling_MBps": round(ceiling_rate / 1e6, 1),
        "ratio_vs_ceiling": round(conv_rate / ceiling_rate, 2),
        "peak_rss_MiB": round(conv["peak_rss_mb"]),
    }
    if args.baseline:
        base = convert_in_child(src, work / f"baseline-{layers}", args.tp, None, BASELINE)
        shutil.rmtree(work / f"baseline-{layers}")
        row["baseline_bytes"] = base["bytes"]
        row["baseline_s"] = round(base["seconds"], 2)
        row["baseline_MBps"] = round(base["bytes"] / base["seconds"] / 1e6, 1)
        row["baseline_peak_rss_MiB"] = round(base["peak_rss_mb"])
        row["baseline_cpu_s"] = {"user": round(base["user_s"], 2), "sys": round(base["sys_s"], 2)}
    return row


def summary(r: dict[str, object]) -> str:
    gb = int(r["convert_bytes"]) / 1e9  # type: ignore[call-overload]
    return (
        f"layers={r['layers']} tp={r['tp']} workers={r['workers']}: wrote {gb:.2f} GB in {r['convert_s']} s "
        f"= {r['convert_MBps']} MB/s (cpu {r['convert_cpu_s']}); cp -r {r['copy_MBps']} MB/s "
        f"(cpu {r['copy_cpu_s']}); ratio {r['ratio_vs_copy']}; cp -r repeated to {r['copy_same_bytes_GB']} GB "
        f"{r['copy_same_bytes_MBps']} MB/s (cpu {r['copy_same_bytes_cpu_s']}); ratio "
        f"{r['ratio_vs_copy_same_bytes']}; O_DIRECT ceiling {r['direct_write_ceiling_MBps']} MB/s, ratio "
        f"{r['ratio_vs_ceiling']}; peak RSS {r['peak_rss_MiB']} MiB"
        + (
            f"; baseline (upstream data path) {r['baseline_s']} s = {r['baseline_MBps']} MB/s, peak RSS "
            f"{r['baseline_peak_rss_MiB']} MiB (cpu {r['baseline_cpu_s']})"
            if "baseline_s" in r
            else ""
        )
    )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument(
        "--layers",
        type=int,
        nargs="+",
        default=[2],
        help="decoder layers (32 = the full 8B); several values: RSS growth (run smallest first)",
    )
    ap.add_argument("--tp", type=int, default=8)
    ap.add_argument("--workers", type=int, default=None, help="pass --workers (default: the converter's own)")
    ap.add_argument(
        "--baseline", action="store_true", help="also time the data path of TensorRT-LLM's converter (see above)"
    )
    ap.add_argument("--repeat", type=int, default=1, help="copy + convert pairs per --layers value")
    ap.add_argument("--vocab", type=int, default=128256)
    ap.add_argument(
        "--dir", type=Path, default=None, help="work directory (source, copy, output); default a temp dir under /tmp"
    )
    ap.add_argument("--keep", action="store_true", help="keep the files")
    ap.add_argument("--json", action="store_true", help="print one JSON document")
    args = ap.parse_args()
    if args.dir is not None:
        args.dir.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix="convert-bench-", dir=args.dir))
    rows = []
    try:
        for layers in sorted(args.layers):
            src = work / f"src-{layers}"
            src_bytes = make_source(src, layers, args.vocab)
            for _ in range(args.repeat):
                rows.append(measure(src, work, layers, src_bytes, args))
                if not args.json:
                    print(summary(rows[-1]), flush=True)
            shutil.rmtree(src)
    finally:
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)
    if args.json:
        doc = {"host": os.uname().nodename, "cpus": os.cpu_count(), "load_avg": os.getloadavg(), "runs": rows}
        print(json.dumps(doc, indent=2))


if __name__ == "__main__":
    main()
