"""A Llama 3.1-style tokenizer made locally: a tiny byte-level BPE plus Llama 3.1's 256 special tokens
(the names and order of meta-llama/Llama-3.1-8B-Instruct's tokenizer_config.json, ids 128000-128255
there, after the tiny vocabulary here) and the structure of its chat template (system block with the
knowledge date, ``| trim`` on every message, the assistant header as generation prompt)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from tests.helpers.models import DEFAULT_CORPUS

_NAMED = {
    0: "<|begin_of_text|>",
    1: "<|end_of_text|>",
    4: "<|finetune_right_pad_id|>",
    6: "<|start_header_id|>",
    7: "<|end_header_id|>",
    8: "<|eom_id|>",
    9: "<|eot_id|>",
    10: "<|python_tag|>",
}


def llama31_special_tokens() -> list[str]:
    """The 256 special tokens in id order: the named ones, the rest ``<|reserved_special_token_N|>``."""
    out, reserved = [], 0
    for i in range(256):
        if i in _NAMED:
            out.append(_NAMED[i])
        else:
            out.append(f"<|reserved_special_token_{reserved}|>")
            reserved += 1
    return out


LLAMA31_TEMPLATE = (
    "{{- bos_token }}\n"
    "{%- if not date_string is defined %}{%- set date_string = '26 Jul 2024' %}{%- endif %}\n"
    "{%- if messages[0]['role'] == 'system' %}\n"
    "    {%- set system_message = messages[0]['content']|trim %}\n"
    "    {%- set messages = messages[1:] %}\n"
    "{%- else %}\n"
    "    {%- set system_message = '' %}\n"
    "{%- endif %}\n"
    "{{- '<|start_header_id|>system<|end_header_id|>\\n\\n' }}\n"
    "{{- 'Cutting Knowledge Date: December 2023\\n' }}\n"
    "{{- 'Today Date: ' + date_string + '\\n\\n' }}\n"
    "{{- system_message }}\n"
    "{{- '<|eot_id|>' }}\n"
    "{%- for message in messages %}\n"
    "    {{- '<|start_header_id|>' + message['role'] + '<|end_header_id|>\\n\\n'"
    " + message['content'] | trim + '<|eot_id|>' }}\n"
    "{%- endfor %}\n"
    "{%- if add_generation_prompt %}\n"
    "    {{- '<|start_header_id|>assistant<|end_header_id|>\\n\\n' }}\n"
    "{%- endif %}\n"
)


def make_llama31_tokenizer(out_dir: str | Path, vocab_size: int = 400) -> Any:
    """Train the tiny BPE, add the 256 special tokens and the template, save and load it back."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import AutoTokenizer, PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size, initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False
    )
    tok.train_from_iterator([DEFAULT_CORPUS], trainer=trainer)
    fast = PreTrainedTokenizerFast(tokenizer_object=tok)
    fast.add_special_tokens({"additional_special_tokens": llama31_special_tokens()})
    fast.bos_token, fast.eos_token = "<|begin_of_text|>", "<|eot_id|>"
    fast.chat_template = LLAMA31_TEMPLATE
    fast.save_pretrained(str(out_dir))
    return AutoTokenizer.from_pretrained(str(out_dir))
