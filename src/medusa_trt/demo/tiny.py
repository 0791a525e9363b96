"""A small Llama 3-architecture model as Hugging Face files: config, byte-level BPE tokenizer, weights.

The demo pre-trains such a model (``demo.pretrain``) and saves it as a real Hugging Face directory
(``config.json`` in the hub spelling, ``model.safetensors``, a tokenizer with a chat template), the
same files a downloaded checkpoint has. Nothing is downloaded.
"""

from __future__ import annotations

import json
import tempfile
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from medusa_trt import fsio

CHAT_TEMPLATE = (
    "{{ bos_token }}{% for m in messages %}<|start_header_id|>{{ m['role'] }}<|end_header_id|>\n\n"
    "{{ m['content'] }}<|eot_id|>{% endfor %}"
    "{% if add_generation_prompt %}<|start_header_id|>assistant<|end_header_id|>\n\n{% endif %}"
)
SPECIAL_TOKENS = ["<|begin_of_text|>", "<|end_of_text|>", "<|eot_id|>", "<|start_header_id|>", "<|end_header_id|>"]


def make_tokenizer(out_dir: str | Path, texts: Iterable[str], vocab_size: int = 320) -> Any:
    """Train a byte-level BPE on ``texts`` and save it (tokenizer.json + tokenizer_config.json)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(texts, trainer=trainer)
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok, bos_token="<|begin_of_text|>", eos_token="<|eot_id|>", pad_token="<|end_of_text|>"
    )
    fast.chat_template = CHAT_TEMPLATE
    # saved in a private directory, then published through fsio: the library's plain open() would
    # follow a link at those names and keep the files of an earlier run it does not overwrite
    with tempfile.TemporaryDirectory(prefix="medusa-trt-tokenizer-") as staging:
        fast.save_pretrained(staging)
        for p in sorted(Path(staging).iterdir()):
            fsio.copy_file(p, Path(out_dir) / p.name)
    return fast


def llama_config_dict(
    *,
    vocab_size: int = 320,
    hidden_size: int = 64,
    intermediate_size: int = 128,
    num_hidden_layers: int = 2,
    num_attention_heads: int = 4,
    num_key_value_heads: int = 2,
    max_position_embeddings: int = 256,
    rope_theta: float = 500000.0,
    llama3_rope: bool = True,
    rms_norm_eps: float = 1e-5,
    tie_word_embeddings: bool = False,
    bos_token_id: int = 0,
    eos_token_id: int = 2,
) -> dict[str, Any]:
    """A Llama 3.x config in the Hugging Face hub spelling (``rope_scaling`` + ``rope_theta``)."""
    rope_scaling = None
    if llama3_rope:  # original context a quarter of the table so tests can run past it
        rope_scaling = {
            "rope_type": "llama3",
            "factor": 8.0,
            "low_freq_factor": 1.0,
            "high_freq_factor": 4.0,
            "original_max_position_embeddings": max(16, max_position_embeddings // 4),
        }
    return {
        "architectures": ["LlamaForCausalLM"],
        "model_type": "llama",
        "vocab_size": vocab_size,
        "hidden_size": hidden_size,
        "intermediate_size": intermediate_size,
        "num_hidden_layers": num_hidden_layers,
        "num_attention_heads": num_attention_heads,
        "num_key_value_heads": num_key_value_heads,
        "head_dim": hidden_size // num_attention_heads,
        "hidden_act": "silu",
        "max_position_embeddings": max_position_embeddings,
        "rms_norm_eps": rms_norm_eps,
        "rope_theta": rope_theta,
        "rope_scaling": rope_scaling,
        "tie_word_embeddings": tie_word_embeddings,
        "attention_bias": False,
        "mlp_bias": False,
        "bos_token_id": bos_token_id,
        "eos_token_id": eos_token_id,
        "torch_dtype": "float32",
    }


def hf_state(model: Any, cfg: dict[str, Any]) -> dict[str, Any]:
    """The tensors a hub checkpoint of ``model`` holds (contiguous; a tied lm_head is left out)."""
    state = {k: v.contiguous() for k, v in model.state_dict().items()}
    if cfg.get("tie_word_embeddings"):
        state.pop("lm_head.weight", None)  # tied checkpoints on the hub carry the embedding only
    return state


def save_hf_model(model: Any, out: Path, cfg: dict[str, Any]) -> None:
    """Write ``model.safetensors`` and ``config.json`` (its dtype the weights')."""
    from safetensors.torch import save

    from medusa_trt import fsio

    state = hf_state(model, cfg)
    fsio.write_bytes(out / "model.safetensors", save(state, metadata={"format": "pt"}))
    fsio.write_text(out / "config.json", json.dumps(written_config(cfg, state), indent=2))


def written_config(cfg: dict[str, Any], state: dict[str, Any]) -> dict[str, Any]:
    """``cfg`` with ``torch_dtype`` set to the dtype the weights are saved in."""
    return dict(cfg, torch_dtype=str(next(iter(state.values())).dtype).removeprefix("torch."))
