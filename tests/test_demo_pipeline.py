"""The demo pipeline end to end at a reduced size: real pre-training, heads, accuracy, build, server, bench."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from medusa_trt.demo.pipeline import DemoConfig, default_cache_dir
from medusa_trt.demo.pretrain import ModelRecipe

SMALL = DemoConfig(
    recipe=ModelRecipe(
        vocab_size=320,
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=512,
        steps=6,
        batch_size=4,
        seq_len=64,
        warmup=2,
    ),
    corpus_chars=40_000,
    num_heads=3,
    head_steps=10,
    head_batch=4,
    distill_prompts=6,
    distill_tokens=24,
    accuracy_prompts=2,
    accuracy_steps=12,
    tree_nodes=4,
    bench_prompts=2,
    max_tokens=12,
    threads=1,
)


@pytest.fixture(scope="module")
def demo_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[dict, dict, Path]:
    from medusa_trt.demo.pipeline import run_demo

    cache = tmp_path_factory.mktemp("demo-cache")
    logs: list[str] = []
    first = run_demo(SMALL, cache_dir=cache, log=logs.append)
    second = run_demo(SMALL, cache_dir=cache, log=logs.append)
    return first, second, cache


def test_document_has_the_promised_keys(demo_run: tuple[dict, dict, Path]) -> None:
    doc, _, cache = demo_run
    for key in (
        "tokens_per_step",
        "speedup",
        "identical_outputs",
        "tokens_per_s_per_user",
        "tree",
        "head_accuracy",
        "expected_tokens_per_step",
        "stages_s",
        "wall_s",
    ):
        assert key in doc
    assert doc["identical_outputs"] is True  # greedy Medusa output equals plain greedy output
    assert doc["requests"]["failed"] == 0 and doc["requests"]["medusa"] == 2
    # Plain decoding emits one token per step; Medusa emits at most the deepest path + 1 (the bonus).
    assert doc["tokens_per_step_no_medusa"] == 1.0
    assert 1.0 <= doc["tokens_per_step"] <= max(len(path) for path in doc["tree"]) + 1
    # The speedup is the ratio of the two measured tokens/s/user figures, both measurements.
    tps = doc["tokens_per_s_per_user"]
    assert tps["medusa"] > 0 and tps["no_medusa"] > 0
    assert doc["speedup"] == pytest.approx(tps["medusa"] / tps["no_medusa"])
    assert "targets" not in doc  # figures only: users get no internal goals
    assert len(doc["head_accuracy"]) == 3 and len(doc["tree"]) == 4
    on_disk = json.loads((cache / "results" / "demo.json").read_text())
    assert on_disk["tree"] == doc["tree"]
    assert (cache / "results" / "demo.png").stat().st_size > 1000


def test_render_prints_the_measured_figures_and_no_targets(demo_run: tuple[dict, dict, Path]) -> None:
    from medusa_trt.demo.report import render

    doc, _, _ = demo_run
    lines: list[str] = []
    render(doc, lines.append)
    text = "\n".join(lines)
    assert f"speedup [bold]{doc['speedup']:.2f}x" in text
    assert f"tokens/step     {doc['tokens_per_step']:.2f} measured" in text
    assert "target" not in text


def test_second_run_reuses_the_cache(demo_run: tuple[dict, dict, Path]) -> None:
    first, second, _ = demo_run
    assert not any(first["reused"][k] for k in ("pretrain", "heads", "accuracy_tree", "build"))
    assert all(second["reused"][k] for k in ("pretrain", "heads", "accuracy_tree", "build"))
    assert second["tree"] == first["tree"]  # deterministic
    assert second["identical_outputs"] is True


def test_a_changed_config_reruns_only_the_stages_it_affects(demo_run: tuple[dict, dict, Path], tmp_path: Path) -> None:
    import shutil
    from dataclasses import replace

    from medusa_trt.demo.pipeline import Stages

    first, _, cache = demo_run
    work = tmp_path / "cache"
    shutil.copytree(cache, work)

    def stages(cfg: DemoConfig) -> tuple[Stages, list[list[int]]]:
        st = Stages(work, cfg, lambda _msg: None, fresh=False)
        model = st.model()
        heads = st.heads(model)
        tree, _, _ = st.tree(model, heads)
        st.engine(model, heads, tree)
        return st, tree

    st, tree = stages(replace(SMALL, accuracy_steps=SMALL.accuracy_steps + 4))  # calibration only
    assert st.reused["pretrain"] and st.reused["heads"] and not st.reused["accuracy_tree"]
    assert st.reused["build"] == (tree == first["tree"])  # the engine follows the tree, nothing else
    st, _ = stages(replace(SMALL, accuracy_steps=SMALL.accuracy_steps + 4, max_tokens=7))  # bench-only change
    assert all(st.reused.values())
    st, _ = stages(replace(SMALL, head_steps=SMALL.head_steps + 2))  # heads and everything after them
    assert st.reused["pretrain"] and not st.reused["heads"] and not st.reused["accuracy_tree"]
    assert not st.reused["build"]


def test_cache_dir_resolution(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("MEDUSA_TRT_CACHE", str(tmp_path / "c"))
    assert default_cache_dir() == tmp_path / "c"
    monkeypatch.delenv("MEDUSA_TRT_CACHE")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "x"))
    assert default_cache_dir() == tmp_path / "x" / "medusa-trt"


def test_auto_tree_is_hardware_aware_and_deterministic(tiny_llama: Path) -> None:
    from dataclasses import replace

    from medusa_trt.demo.pipeline import choose_demo_tree
    from medusa_trt.medusa.tree_builder import tree_growth
    from medusa_trt.medusa.trees import tree_problems

    acc = [[0.8, 0.1, 0.05], [0.7, 0.1, 0.05], [0.6, 0.1, 0.05]]
    cfg = replace(SMALL, tree_nodes=0, max_tree_nodes=12)
    tree = choose_demo_tree(acc, tiny_llama, cfg)
    assert 1 <= len(tree) <= 12 and tree_problems(tree, num_heads=3) == []
    assert tree == tree_growth(acc, len(tree))  # an optimal tree of the chosen size
    assert choose_demo_tree(acc, tiny_llama, cfg) == tree
    assert choose_demo_tree(acc, tiny_llama, replace(cfg, tree_nodes=5)) == tree_growth(acc, 5)


def test_the_demo_heads_share_the_base_lm_head_and_the_engine_reads_it_once(demo_run: tuple[dict, dict, Path]) -> None:
    """The demo trains its heads with the base lm_head frozen: the file carries bit-identical copies, and
    the engine it builds keeps none of them (its heads project through the base lm_head)."""
    import torch
    from safetensors.torch import load_file

    from medusa_trt.runtime import load_engine

    _, _, cache = demo_run
    heads = load_file(str(cache / "heads" / "medusa_lm_head.safetensors"))
    base = load_file(str(cache / "model" / "model.safetensors"))["lm_head.weight"]
    assert all(torch.equal(heads[f"{k}.1.weight"], base) for k in range(SMALL.num_heads))
    with load_engine(cache / "engine") as engine:
        w = engine._runner.model.w
        assert w.heads_share_lm and w.heads_lm_t is None and w.heads_lm is None
