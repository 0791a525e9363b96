"""Medusa-1 training on a tiny real Llama: loss goes down, accuracy goes up, files convert, resume works."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from medusa_trt.train.data import builtin_prompts

PROMPTS = [p for p in builtin_prompts() if isinstance(p, str)] + [
    "x = 1\ny = 2\n", "def add(a, b):\n", "import json\n", "while True:\n", "return None\n", "class A:\n",
]


def _cfg(**kw: object) -> object:
    from medusa_trt.train.trainer import TrainConfig

    base = dict(num_heads=3, steps=40, lr=3e-3, batch_size=8, seq_len=64, gen_tokens=40, log_every=20,
                checkpoint_every=10, progress=False, resume=True)
    base.update(kw)
    return TrainConfig(**base)  # type: ignore[arg-type]


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory, tiny_llama: Path) -> tuple[Path, Path, object]:
    import torch

    from medusa_trt.train.trainer import train_heads

    torch.set_num_threads(1)
    root = tmp_path_factory.mktemp("train")
    init = root / "init"
    train_heads(tiny_llama, init, data=PROMPTS, config=_cfg(steps=0))  # the heads as initialised
    res = train_heads(tiny_llama, root / "heads", data=PROMPTS, config=_cfg())
    return init, root / "heads", res


def test_training_reduces_loss(trained: tuple[Path, Path, object]) -> None:
    _, heads, res = trained
    assert res.final_loss < 0.8 * res.initial_loss  # type: ignore[attr-defined]  # training sequences
    assert res.eval_final_loss < res.eval_initial_loss  # type: ignore[attr-defined]  # held out
    hist = json.loads((heads / "training.json").read_text())["history"]
    assert hist[0]["step"] == 0 and hist[-1]["step"] == 40
    assert all(len(h["eval_top1"]) == 3 for h in hist)


def test_training_raises_accuracy_on_the_models_own_greedy_path(trained: tuple[Path, Path, object],
                                                                 tiny_llama: Path) -> None:
    from medusa_trt.train.accuracy import measure_accuracy

    init, heads, _ = trained
    before = measure_accuracy(tiny_llama, PROMPTS, heads_dir=init, steps=40, topk=5).table
    after = measure_accuracy(tiny_llama, PROMPTS, heads_dir=heads, steps=40, topk=5).table
    top1_before = sum(row[0] for row in before)
    top1_after = sum(row[0] for row in after)
    assert top1_after > top1_before + 0.1
    assert all(0.0 <= v <= 1.0 for row in after for v in row)
    assert all(sum(row) <= 1.0 + 1e-6 for row in after)  # each rank's own rate: they sum to top-k


def test_heads_files_are_fasterdecoding_format(trained: tuple[Path, Path, object]) -> None:
    from safetensors.torch import load_file

    from medusa_trt.medusa.heads import MedusaHeads

    _, heads, _ = trained
    cfg = json.loads((heads / "config.json").read_text())
    assert cfg["medusa_num_heads"] == 3 and cfg["medusa_num_layers"] == 1
    state = load_file(str(heads / "medusa_lm_head.safetensors"))
    assert set(state) == {f"{k}.{n}" for k in range(3) for n in ("0.linear.weight", "0.linear.bias", "1.weight")}
    assert state["0.0.linear.weight"].shape == (64, 64) and state["2.1.weight"].shape == (320, 64)
    again = MedusaHeads.from_pretrained(heads)
    assert again.num_heads == 3 and again.vocab_size == 320


def test_initial_heads_follow_the_paper(trained: tuple[Path, Path, object], tiny_llama: Path) -> None:
    from safetensors.torch import load_file

    init, _, _ = trained
    state = load_file(str(init / "medusa_lm_head.safetensors"))
    base = load_file(str(tiny_llama / "model.safetensors"))["lm_head.weight"]
    for k in range(3):
        assert (state[f"{k}.0.linear.weight"] == 0).all()  # ResBlock weight zero-initialised
        assert state[f"{k}.0.linear.bias"].abs().sum() > 0  # the bias keeps PyTorch's default init
        assert (state[f"{k}.1.weight"] == base).all()  # lm_head copied from the base model


def test_resume_continues_from_the_checkpoint(tmp_path: Path, tiny_llama: Path) -> None:
    import torch
    from safetensors.torch import load_file

    from medusa_trt.train.trainer import train_heads

    class Stop(Exception):
        pass

    def crash(step: int, loss: float) -> None:
        if step == 13:
            raise Stop

    data = PROMPTS[:10]
    with pytest.raises(Stop):
        train_heads(tiny_llama, tmp_path / "a", data=data, config=_cfg(steps=20), on_step=crash)
    assert (tmp_path / "a" / ".train" / "state.pt").is_file()
    assert not (tmp_path / "a" / "config.json").exists()  # no half-written heads that look complete
    resumed = train_heads(tiny_llama, tmp_path / "a", data=data, config=_cfg(steps=20))
    assert resumed.resumed_from == 10
    straight = train_heads(tiny_llama, tmp_path / "b", data=data, config=_cfg(steps=20))
    assert straight.resumed_from == 0
    a = load_file(str(tmp_path / "a" / "medusa_lm_head.safetensors"))
    b = load_file(str(tmp_path / "b" / "medusa_lm_head.safetensors"))
    assert all(torch.allclose(a[k], b[k], atol=1e-5) for k in a)


def test_bad_inputs_are_one_line_errors(tmp_path: Path, tiny_llama: Path) -> None:
    from medusa_trt.errors import CheckpointError, InvalidInputError
    from medusa_trt.train.trainer import train_heads

    with pytest.raises(CheckpointError, match="not a Hugging Face model directory"):
        train_heads(tmp_path, tmp_path / "o", data=PROMPTS, config=_cfg())
    with pytest.raises(InvalidInputError):
        train_heads(tiny_llama, tmp_path / "o", data=str(tmp_path / "missing.jsonl"), config=_cfg())
    with pytest.raises(InvalidInputError):
        train_heads(tiny_llama, tmp_path / "o", data=PROMPTS, config=_cfg(num_heads=0))
