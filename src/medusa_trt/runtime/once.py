"""One generation for a text prompt: tokenize (optionally with the chat template), generate, detokenize.

What `medusa-trt run DIR --prompt` does, as a library call: the CLI only renders the result. The text
streams through ``on_text`` as it settles (``runtime.text.TextStream``, as the server streams it).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from medusa_trt.errors import CheckpointError
from medusa_trt.runtime.api import ReferenceEngine, load_engine
from medusa_trt.runtime.text import TextStream
from medusa_trt.runtime.types import SamplingParams
from medusa_trt.runtime.watchdog import StepClock


def prompt_ids(engine: ReferenceEngine, prompt: str, *, chat: bool) -> list[int]:
    """``prompt`` as token ids: plain (with BOS), or as one user message in the model's chat template."""
    tok = engine.tokenizer
    if tok is None:
        raise CheckpointError(
            f"{engine.info.ckpt_dir}: no tokenizer files beside the checkpoint",
            hint="`medusa-trt convert` copies them from the model directory.",
        )
    if chat:
        ids = tok.apply_chat_template(
            [{"role": "user", "content": prompt}], add_generation_prompt=True, tokenize=True, return_dict=False
        )
    else:
        ids = tok(prompt, add_special_tokens=True)["input_ids"]
    return [int(t) for t in ids]


def generate_text(
    engine: ReferenceEngine,
    prompt: str,
    params: SamplingParams,
    *,
    medusa: bool = True,
    chat: bool = False,
    on_text: Callable[[str], None] | None = None,
    clock: StepClock | None = None,
) -> dict[str, Any]:
    """Generate for ``prompt`` on a loaded engine; the result as a JSON-ready document.

    ``on_text`` receives the completion's text in pieces that never need retracting; their
    concatenation is the document's ``text``. ``clock`` times each engine step for a watchdog
    (``runtime.watchdog.run_guarded``).
    """
    clock = clock or StepClock(0, 0)
    ids = prompt_ids(engine, prompt, chat=chat)
    stream = TextStream(engine.tokenizer)
    with clock.step(first=True):  # the prefill
        gen = engine.generate(ids, params, medusa=medusa)
        chunk = next(gen, None)
    out: list[int] = []
    finish = None
    while chunk is not None:
        out += chunk.token_ids
        if chunk.stop_token is not None:  # as the server's token_ids: the stop token counted, never printed
            out.append(chunk.stop_token)
        finish = chunk.finish_reason
        delta = stream.push(chunk.token_ids)
        if delta and on_text is not None:
            on_text(delta)
        with clock.step():
            chunk = next(gen, None)
    tail = stream.finish()
    if tail and on_text is not None:
        on_text(tail)
    st = gen.stats
    assert st is not None  # set once the generation is exhausted
    return {
        "text": stream.text,
        "token_ids": out,
        "finish_reason": finish,
        "prompt_tokens": st.prompt_tokens,
        "completion_tokens": st.completion_tokens,
        "num_steps": st.num_steps,
        "tokens_per_step": st.tokens_per_step,
        "stats": {
            "medusa": st.medusa,
            "tree_nodes": len(engine.tree) if st.medusa else 0,
            "adaptive": engine.adapt,
            "acceptance": params.acceptance if params.temperature > 0 else "greedy",
            "tree_nodes_used": {str(k): v for k, v in st.tree_nodes_used.items()},
            "tp": engine.tp,
            "accepted_per_depth": st.accepted_per_depth,
            "prefill_s": st.prefill_s,
            "decode_s": st.decode_s,
            "tokens_per_s": st.completion_tokens / st.decode_s if st.decode_s > 0 else 0.0,
        },
    }


def generate_once(
    path: str | Path,
    prompt: str,
    params: SamplingParams,
    *,
    medusa: bool = True,
    tree: str | None = None,
    device: str = "cpu",
    chat: bool = False,
    on_text: Callable[[str], None] | None = None,
) -> dict[str, Any]:
    """Load the checkpoint or engine dir at ``path``, generate once (``generate_text``), close it."""
    with load_engine(path, device=device, tree=tree) as engine:
        return generate_text(engine, prompt, params, medusa=medusa, chat=chat, on_text=on_text)
