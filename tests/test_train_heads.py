"""Medusa-1 training on a tiny real Llama: loss goes down, accuracy goes up, files convert, resume works."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from medusa_trt.train.data import builtin_prompts

PROMPTS = [p for p in builtin_prompts() if isinstance(p, str)] + [
    "x = 1\ny = 2\n",
    "def add(a, b):\n",
    "import json\n",
    "while True:\n",
    "return None\n",
    "class A:\n",
]


def _cfg(**kw: object) -> object:
    from medusa_trt.train.trainer import TrainConfig

    base = dict(
        num_heads=3,
        steps=40,
        lr=3e-3,
        batch_size=8,
        seq_len=64,
        gen_tokens=40,
        log_every=20,
        checkpoint_every=10,
        progress=False,
        resume=True,
    )
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


def test_builtin_prompts_mix_chat_and_code_in_every_prefix() -> None:
    prompts = builtin_prompts()
    kinds = ["code" if isinstance(p, str) else "chat" for p in prompts]
    assert kinds[:2] == ["chat", "code"] and {"chat", "code"} <= set(kinds[:4])
    assert len(prompts) == len({str(p) for p in prompts})  # every prompt once


def test_training_reduces_loss(trained: tuple[Path, Path, object]) -> None:
    _, heads, res = trained
    assert res.final_loss < 0.8 * res.initial_loss  # type: ignore[attr-defined]  # training sequences
    assert res.eval_final_loss < res.eval_initial_loss  # type: ignore[attr-defined]  # held out
    hist = json.loads((heads / "training.json").read_text())["history"]
    assert hist[0]["step"] == 0 and hist[-1]["step"] == 40
    assert all(len(h["eval_top1"]) == 3 for h in hist)


def test_training_raises_accuracy_on_the_models_own_greedy_path(
    trained: tuple[Path, Path, object], tiny_llama: Path
) -> None:
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
    assert len(list((tmp_path / "a" / ".train").glob("train-*/state.pt"))) == 1
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

    (tmp_path / "m").mkdir()
    with pytest.raises(CheckpointError, match="neither a Hugging Face model nor a TRT-LLM checkpoint"):
        train_heads((tmp_path / "m").resolve(), tmp_path / "o", data=PROMPTS, config=_cfg())
    with pytest.raises(InvalidInputError):
        train_heads(tiny_llama, tmp_path / "o", data=str(tmp_path / "missing.jsonl"), config=_cfg())
    with pytest.raises(InvalidInputError):
        train_heads(tiny_llama, tmp_path / "o", data=PROMPTS, config=_cfg(num_heads=0))


def test_head_k_learns_the_token_k_plus_2_ahead_with_weight_0_8_pow_k() -> None:
    import math

    import torch

    from medusa_trt.train.loop import rank_hits, summed_loss, target_counts

    k_heads, s, v = 3, 9, 16
    labels = torch.tensor([[-100, -100, 3, 4, 5, 6, 7, 8, 9]])  # unshifted; the continuation starts at 2
    counts = target_counts(labels, k_heads)
    assert counts.tolist() == [7.0, 6.0, 5.0]  # targets 2..8, 3..8, 4..8
    # uniform logits: every head's mean CE is log V, so the total is log V * sum_k 0.8^k
    total = summed_loss(torch.zeros(k_heads, 1, s, v), labels, counts)
    assert float(total) == pytest.approx(math.log(v) * (1 + 0.8 + 0.8**2))
    # head k at position t puts all its mass on labels[t + k + 2]: zero loss, every valid target a top-1 hit
    logits = torch.full((k_heads, 1, s, v), -30.0)
    for k in range(k_heads):
        for t in range(s - k - 2):
            if labels[0, t + k + 2] >= 0:
                logits[k, 0, t, labels[0, t + k + 2]] = 30.0
    assert float(summed_loss(logits, labels, counts)) < 1e-6
    hits, valid = rank_hits(logits, labels, 2)
    assert hits[:, 0].tolist() == valid.tolist() == [7.0, 6.0, 5.0]
    assert hits[:, 1].sum() == 0  # own-rank counts: the rank-1 token is never the target here
    # one position off (token k+1 ahead) is a miss everywhere
    shifted = torch.roll(logits, shifts=1, dims=2)
    assert float(summed_loss(shifted, labels, counts)) > 10.0
    assert rank_hits(shifted, labels, 2)[0][:, 0].sum() == 0
    # with the global count of a bigger batch, a slice's loss is its share of the batch's loss
    both = torch.cat([labels, labels])
    half = summed_loss(logits[:, :1] * 0, labels, target_counts(both, k_heads))
    assert float(half) * 2 == pytest.approx(
        float(summed_loss(torch.zeros(k_heads, 2, s, v), both, target_counts(both, k_heads)))
    )


def test_accuracy_counts_each_ranks_own_hits_against_the_token_k_plus_1_steps_later() -> None:
    import torch

    from medusa_trt.train.accuracy import accumulate

    base = [10, 11, 12, 13, 14]  # greedy tokens b[0..5)
    # topk[s, k, r]: head k's rank-r token at step s (heads predict b[s+k+1])
    topk = torch.tensor(
        [
            [[11, 99], [99, 12]],  # s=0: head 0 rank 0 hit (b1); head 1 rank 1 hit (b2)
            [[99, 12], [13, 99]],  # s=1: head 0 rank 1 hit (b2); head 1 rank 0 hit (b3)
            [[13, 99], [14, 99]],  # s=2: head 0 rank 0 hit (b3); head 1 rank 0 hit (b4)
            [[99, 99], [99, 99]],  # s=3: head 0 misses b4; head 1 has no b5: not counted
            [[99, 99], [99, 99]],  # s=4: nothing later to compare with
        ]
    )
    hits, counts = torch.zeros(2, 2), torch.zeros(2)
    accumulate(base, topk, hits, counts)
    assert counts.tolist() == [4.0, 3.0]
    assert hits.tolist() == [[2.0, 1.0], [2.0, 1.0]]  # own-rank hits, not cumulative top-r


def test_other_inputs_get_other_stages_and_never_resume_a_foreign_state(tmp_path: Path, tiny_llama: Path) -> None:
    from medusa_trt.train.trainer import train_heads

    data = PROMPTS[:4]
    first = train_heads(tiny_llama, tmp_path / "a", data=data, config=_cfg(steps=10, checkpoint_every=5))
    again = train_heads(tiny_llama, tmp_path / "a", data=data, config=_cfg(steps=10, checkpoint_every=5, gen_tokens=7))
    assert again.resumed_from == 0  # not the first run's state on other data
    assert first.stages["distil"]["dir"] != again.stages["distil"]["dir"]
    assert first.stages["train"]["dir"] != again.stages["train"]["dir"]
    assert {p.name.split("-")[0] for p in (tmp_path / "a" / ".train").iterdir()} == {
        "checkpoint",
        "distil",
        "hidden",
        "train",
    }
    # the same command again: every stage is found done (distil, hidden) or at its last step (train)
    same = train_heads(tiny_llama, tmp_path / "a", data=data, config=_cfg(steps=10, checkpoint_every=5, gen_tokens=7))
    assert same.stages["distil"]["cached"] and same.stages["hidden"]["cached"] and same.resumed_from == 10


def test_chat_prompts_fall_back_to_raw_text_without_a_chat_template() -> None:
    from medusa_trt.train.data import encode_prompt

    class BaseTokenizer:  # a base model's tokenizer: no chat template, apply_chat_template would raise
        chat_template = None

        def encode(self, text: str) -> list[int]:
            return list(text.encode())

        def apply_chat_template(self, *a: object, **k: object) -> list[int]:
            raise ValueError("no chat template")

    assert encode_prompt(BaseTokenizer(), [{"role": "user", "content": "hi"}]) == list(b"hi\n")
    assert encode_prompt(BaseTokenizer(), "def f():\n") == list(b"def f():\n")
