"""`medusa-trt demo`: the embedded default, offline and deterministic, end to end.

Stages (each cached under the cache dir, keyed by a hash of everything it depends on, so a second
run reuses them and a changed recipe redoes only what changed):

1. ``model/``     a tiny Llama 3 with its own byte-level BPE, pre-trained on stdlib source
2. ``heads/``     Medusa-1 heads trained on the model's own greedy generations
3. ``accuracy.csv`` per-head, per-rank accuracy on held-out prompts; ``tree.yaml`` the optimal tree
4. ``engine/``    the ``cpu`` profile engine (build API), max_draft_len set by the tree
5. measured every run: our server, the same held-out prompts with Medusa on and off, greedy
"""

from __future__ import annotations

import json
import os
import platform
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from medusa_trt import fsio, outputs, records
from medusa_trt.demo.pretrain import ModelRecipe

CACHE_ENV = "MEDUSA_TRT_CACHE"
CACHE_KIND = "demo-cache"  # ownership kinds (outputs.py) of the cache and of the results directory
RESULTS_KIND = "demo-results"


@dataclass(frozen=True)
class DemoConfig:
    recipe: ModelRecipe = field(default_factory=ModelRecipe)
    corpus_chars: int = 1_500_000
    num_heads: int = 4
    # the heads project with the frozen base lm_head (Medusa's shared-lm_head variant): the runtime
    # then reads one lm_head for all of them, and the ResBlocks alone learn as well at a higher rate
    share_lm_head: bool = True
    head_steps: int = 200
    head_lr: float = 1e-2
    head_batch: int = 16
    distill_prompts: int = 160
    distill_tokens: int = 96
    accuracy_prompts: int = 16
    accuracy_steps: int = 64
    tree_nodes: int = 0  # 0: hardware-aware, the size the cpu profile's step-time model favours
    max_tree_nodes: int = 16
    tree_context_len: int = 128
    bench_prompts: int = 8
    max_tokens: int = 128
    threads: int = 2

    def key(self, *fields: str) -> dict[str, Any]:
        d = asdict(self)
        return {f: d[f] for f in fields}


def default_cache_dir() -> Path:
    """$MEDUSA_TRT_CACHE, else $XDG_CACHE_HOME/medusa-trt, else ~/.cache/medusa-trt."""
    if os.environ.get(CACHE_ENV):
        return Path(os.environ[CACHE_ENV]).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base).expanduser() / "medusa-trt"


def _measured(doc: dict[str, Any]) -> dict[str, Any]:
    """A demo stage record without its header: what the stage measured."""
    return {k: v for k, v in doc.items() if k not in records.HEADER_KEYS}


class Stages:
    """Runs the cached stages as steps (steps.py): each is skipped when its inputs (the
    recipe, and earlier stages' outputs by fingerprint) and its outputs are unchanged since it ran."""

    def __init__(self, cache: Path, cfg: DemoConfig, log: Callable[[str], None], fresh: bool) -> None:
        from medusa_trt.outputs import OwnedDir
        from medusa_trt.steps import StepRunner

        self.cache, self.cfg, self.log, self.fresh = cache, cfg, log, fresh
        self.owned = OwnedDir(cache, CACHE_KIND)
        self.runner = StepRunner(cache, force=fresh, owned=self.owned)
        self.timings: dict[str, float] = {}
        self.reused: dict[str, bool] = {}
        self.info: dict[str, Any] = {}

    def _step(self, name: str, out: str, inputs: dict[str, Any], func: Callable[[], None]) -> bool:
        """Run (or skip) one stage; True when its cached output was reused."""
        from medusa_trt.steps import Step, StepKind, StepStatus

        step = Step(name, f"demo {name}", argv=[], inputs=inputs, outputs=[out], kind=StepKind.PYTHON, func=func)
        return self.runner.run(step).status is StepStatus.SKIPPED

    def timed(self, name: str, reused: bool, t0: float) -> None:
        self.timings[name] = round(time.perf_counter() - t0, 2)
        self.reused[name] = reused

    def model(self) -> Path:
        from medusa_trt.demo.corpus import load_corpus
        from medusa_trt.demo.pretrain import pretrain

        t0, out = time.perf_counter(), self.cache / "model"
        corpus = load_corpus(self.cfg.corpus_chars)
        self.corpus = corpus
        every = max(1, self.cfg.recipe.steps // 8)

        def run() -> None:
            self.log(
                f"model: pre-training a tiny Llama 3 on {len(corpus.train_files)} stdlib modules "
                f"({self.cfg.recipe.steps} steps)"
            )
            info = pretrain(
                out,
                corpus.train_text,
                self.cfg.recipe,
                on_step=lambda s, loss: (
                    self.log(f"  step {s}/{self.cfg.recipe.steps} loss {loss:.3f}") if s % every == 0 else None
                ),
            )
            records.write(records.DEMO_INFO, out, info)

        inputs = {"recipe": asdict(self.cfg.recipe), "corpus": corpus.digest, "python": platform.python_version()}
        reused = self._step("pretrain", "model", inputs, run)
        if reused:
            self.log(f"model: reusing {out}")
        self.info["pretrain"] = _measured(records.read(records.DEMO_INFO, out))
        self.timed("pretrain", reused, t0)
        return out

    def heads(self, model_dir: Path) -> Path:
        from medusa_trt.demo.corpus import code_prompts
        from medusa_trt.outputs import OwnedDir
        from medusa_trt.train.trainer import TrainConfig, train_heads

        t0, out = time.perf_counter(), self.cache / "heads"
        c = self.cfg

        def run() -> None:
            prompts: list[Any] = list(code_prompts(self.corpus.train_files, c.distill_prompts))
            self.log(f"heads: self-distillation on {len(prompts)} prompts, {c.head_steps} steps, {c.num_heads} heads")
            tcfg = TrainConfig(
                num_heads=c.num_heads,
                steps=c.head_steps,
                lr=c.head_lr,
                share_lm_head=c.share_lm_head,
                batch_size=c.head_batch,
                seq_len=c.distill_tokens + 96,
                gen_tokens=c.distill_tokens,
                checkpoint_every=0,
                log_every=max(1, c.head_steps // 4),
                resume=False,
                progress=False,
            )
            res = train_heads(model_dir, out, data=prompts, config=tcfg)
            OwnedDir(out, "heads").remove(".train")  # resumable state is not needed once cached
            info = {
                "final_loss": res.final_loss,
                "initial_loss": res.initial_loss,
                "train_top1": res.top1,
                "sequences": res.sequences,
            }
            records.write(records.DEMO_INFO, out, info)

        keys = (
            "num_heads",
            "share_lm_head",
            "head_steps",
            "head_lr",
            "head_batch",
            "distill_prompts",
            "distill_tokens",
        )
        reused = self._step("heads", "heads", {"model_dir": "model", **c.key(*keys)}, run)
        if reused:
            self.log(f"heads: reusing {out}")
        self.info["heads"] = _measured(records.read(records.DEMO_INFO, out))
        self.timed("heads", reused, t0)
        return out

    def tree(self, model_dir: Path, heads_dir: Path) -> tuple[list[list[int]], list[list[float]], float]:
        from medusa_trt.demo.corpus import code_prompts
        from medusa_trt.medusa import tree_builder as tb
        from medusa_trt.train.accuracy import measure_accuracy

        t0 = time.perf_counter()
        acc_path, tree_path = self.cache / "accuracy.csv", self.cache / "tree.yaml"
        c = self.cfg

        def run() -> None:
            prompts: list[Any] = list(code_prompts(self.corpus.heldout_files[1::2], c.accuracy_prompts))
            self.log(f"accuracy: {len(prompts)} held-out prompts x {c.accuracy_steps} greedy steps")
            table = measure_accuracy(model_dir, prompts, heads_dir=heads_dir, steps=c.accuracy_steps).table
            fsio.write_text(acc_path, tb.format_accuracy_csv(table))

        inputs = {"heads_dir": "heads", **c.key("accuracy_prompts", "accuracy_steps")}
        reused = self._step("accuracy", acc_path.name, inputs, run)
        # the tree always comes from the CSV's values, so a cached run picks exactly the same tree
        acc = tb.parse_accuracy_csv(acc_path.read_text(), str(acc_path))
        tree = choose_demo_tree(acc, model_dir, c)
        expected = tb.expected_tokens_per_step(acc, tree)
        self.owned.claim([tree_path.name])
        fsio.write_text(tree_path, tb.tree_yaml(tree, expected))
        self.owned.done([tree_path.name])
        self.log(
            "head top-1 accuracy: "
            + ", ".join(f"h{k} {row[0]:.2f}" for k, row in enumerate(acc))
            + f"; tree of {len(tree)} nodes, expected {expected:.2f} tokens/step"
        )
        self.timed("accuracy_tree", reused, t0)
        return tree, acc, expected

    def engine(self, model_dir: Path, heads_dir: Path, tree: list[list[int]]) -> Path:
        t0, out = time.perf_counter(), self.cache / "engine"

        def run() -> None:
            self.log("engine: building the cpu profile engine with the tuned tree")
            build_engine(model_dir, heads_dir, tree, out, self.cache / "tree.yaml")

        reused = self._step("build", "engine", {"heads_dir": "heads", "tree": tree}, run)
        if reused:
            self.log(f"engine: reusing {out}")
        self.timed("build", reused, t0)
        return out


def choose_demo_tree(acc: list[list[float]], model_dir: Path, cfg: DemoConfig) -> list[list[int]]:
    """A fixed-size tree, or (tree_nodes 0) the size maximising expected tokens/step over the `cpu` profile's
    analytic step time (deterministic, unlike a timing sweep on a busy machine)."""
    from medusa_trt.medusa import tree_builder as tb

    if cfg.tree_nodes > 0:
        return tb.build_tree(acc, cfg.tree_nodes)
    from medusa_trt.config.model import resolve_model
    from medusa_trt.config.profile import load_profile
    from medusa_trt.plan import step_time_ms

    prof, shape = load_profile("cpu"), resolve_model(str(model_dir))
    curve = {n: float(step_time_ms(prof, shape, n + 1, cfg.tree_context_len)) for n in range(cfg.max_tree_nodes + 1)}
    return tb.choose_tree(acc, curve, max_nodes=cfg.max_tree_nodes).tree


def build_engine(model_dir: Path, heads_dir: Path, tree: list[list[int]], out: Path, tree_file: Path) -> None:
    """`medusa-trt build --profile cpu` with the tree (its size becomes max_draft_len)."""
    from medusa_trt.config.profile import load_profile
    from medusa_trt.engines.build import execute, prepare

    base = load_profile("cpu")
    medusa = base.medusa.model_copy(update={"max_draft_len": len(tree), "tree": tree})
    profile = base.model_copy(update={"medusa": medusa})
    plan = prepare(profile, str(model_dir), medusa=str(heads_dir), output=out, tree=str(tree_file))
    execute(plan, force=True)


def bench(engine_dir: Path, prompts: list[str], cfg: DemoConfig, work: Path) -> Any:
    """Our server on the engine; each prompt with Medusa on and off (interleaved), greedy, one user."""
    from medusa_trt.bench.runner import BenchConfig, run_benchmark

    data = work / "bench_prompts.jsonl"
    fsio.write_text(data, "".join(json.dumps({"prompt": p}) + "\n" for p in prompts))
    bc = BenchConfig(
        engine=engine_dir,
        dataset=str(data),
        num_prompts=len(prompts),
        concurrency=(1,),
        max_tokens=cfg.max_tokens,
        compare_no_medusa=True,
        warmup=1,
        seed=0,
        temperature=0.0,
        endpoint="completions",
        command=["medusa-trt", "demo"],
    )
    return run_benchmark(bc)


def run_demo(
    cfg: DemoConfig | None = None,
    *,
    cache_dir: str | Path | None = None,
    output_dir: str | Path | None = None,
    fresh: bool = False,
    log: Callable[[str], None] | None = None,
) -> dict[str, Any]:
    """Run every stage and return the result document (also written to ``output_dir/demo.json``).

    The cache and the results directory follow the output rules (outputs.py): locked while in use,
    refused when they hold files medusa-trt did not write."""
    from medusa_trt.demo.report import render

    cfg = cfg or DemoConfig()
    if log is None:  # the messages carry Rich markup: print them on stderr as the CLI does
        from rich.console import Console

        log = Console(stderr=True, highlight=False).print

    cache_raw = cache_dir if cache_dir is not None else default_cache_dir()
    if output_dir is not None:  # both paths checked before either directory is created
        outputs.output_path(output_dir)
    outputs.output_path(cache_raw, "--cache-dir")
    with outputs.writing(cache_raw, kind=CACHE_KIND, inputs={}, param="--cache-dir") as cache_dir_owned:
        cache = cache_dir_owned.root
        out_raw = output_dir if output_dir is not None else cache / "results"
        with outputs.writing(out_raw, kind=RESULTS_KIND, inputs={}) as results:
            results.claim(RESULT_FILES)
            doc = _run(cfg, cache, results.root, fresh, log)
            results.done(RESULT_FILES)
    render(doc, log)
    return doc


RESULT_FILES = ("bench_prompts.jsonl", "bench.json", "demo.png", "demo.json")


def _run(cfg: DemoConfig, cache: Path, out: Path, fresh: bool, log: Callable[[str], None]) -> dict[str, Any]:
    import torch

    from medusa_trt.demo.corpus import code_prompts
    from medusa_trt.demo.report import write_plot

    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    threads = torch.get_num_threads()
    torch.set_num_threads(cfg.threads)  # the same on a laptop and a 2-core CI box
    t0 = time.perf_counter()
    try:
        st = Stages(cache, cfg, log, fresh)
        model_dir = st.model()
        heads_dir = st.heads(model_dir)
        tree, acc, expected = st.tree(model_dir, heads_dir)
        engine_dir = st.engine(model_dir, heads_dir, tree)
    finally:
        torch.set_num_threads(threads)
    prompts = code_prompts(st.corpus.heldout_files[0::2], cfg.bench_prompts)
    log(f"bench: {len(prompts)} held-out prompts, {cfg.max_tokens} tokens each, Medusa on and off, same server")
    tb = time.perf_counter()
    report = bench(engine_dir, prompts, cfg, out)
    st.timed("bench", False, tb)
    doc = result_document(report, cfg, st, tree, acc, expected, cache, out, time.perf_counter() - t0)
    report.write(out / "bench.json")
    doc["plot"] = str(write_plot(doc, out / "demo.png"))
    doc["bench_json"] = str(out / "bench.json")
    fsio.write_json(out / "demo.json", doc)
    return doc


def result_document(
    report: Any,
    cfg: DemoConfig,
    st: Stages,
    tree: list[list[int]],
    acc: list[list[float]],
    expected: float,
    cache: Path,
    out: Path,
    wall_s: float,
) -> dict[str, Any]:
    on = report.run(1, True) or {}
    off = report.run(1, False) or {}
    comp = report.comparisons[0] if report.comparisons else {}
    return {
        "tokens_per_step": on.get("tokens_per_step"),
        "speedup": comp.get("speedup"),
        "identical_outputs": bool(comp.get("identical_outputs")),
        "tokens_per_s_per_user": {
            "medusa": comp.get("mean_output_tokens_per_s_per_user_medusa"),
            "no_medusa": comp.get("mean_output_tokens_per_s_per_user_no_medusa"),
        },
        "tokens_per_step_no_medusa": off.get("tokens_per_step"),
        "expected_tokens_per_step": expected,
        "tree": tree,
        "tree_nodes": len(tree),
        "head_accuracy": acc,
        "requests": {
            "medusa": on.get("completed"),
            "no_medusa": off.get("completed"),
            "failed": (on.get("failed") or 0) + (off.get("failed") or 0),
        },
        "mismatches": comp.get("mismatches", []),
        "stages_s": st.timings,
        "reused": st.reused,
        "wall_s": round(wall_s, 1),
        "model": st.info.get("pretrain"),
        "heads": st.info.get("heads"),
        "config": asdict(cfg),
        "cache_dir": str(cache),
        "output_dir": str(out),
        "python": sys.version.split()[0],
    }
