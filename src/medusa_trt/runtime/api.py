"""The reference runtime's public API (docs/internals.md): load_engine, ReferenceEngine, generate.

Import-light: torch and the model code load inside ``load_engine``.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

from medusa_trt import fsio
from medusa_trt.errors import CheckpointError, InvalidInputError, TreeError
from medusa_trt.medusa.trees import Tree, load_tree, tree_name, validate_tree
from medusa_trt.runtime.types import Chunk, Continuation, GenerationStats, SamplingParams

if TYPE_CHECKING:
    import torch

    from medusa_trt.medusa.buffers import TreeBuffers
    from medusa_trt.runtime.config import CheckpointInfo
    from medusa_trt.runtime.speculation import Speculation
    from medusa_trt.runtime.tp import Runner


class Generation:
    """An iterator of Chunk; ``stats`` is set once exhausted; ``close()`` aborts early."""

    def __init__(self, decoder: Any, on_close: Any) -> None:
        self._decoder = decoder
        self._it: Iterator[Chunk] = decoder.run()
        self._on_close = on_close
        self.stats: GenerationStats | None = None

    def __iter__(self) -> Iterator[Chunk]:
        return self

    def __next__(self) -> Chunk:
        try:
            return next(self._it)
        except BaseException:  # exhausted or failed: free the engine either way
            self.close()
            raise

    def close(self) -> None:
        if self._on_close is None:
            return
        self._it.close()  # type: ignore[attr-defined]
        self.stats = self._decoder.stats
        self._on_close()
        self._on_close = None


class ReferenceEngine:
    """A loaded checkpoint: tokenizer, tree buffers and the rank processes. One generation at a time.

    With ``adapt`` each Medusa step uses the nested subtree of ``tree`` with the best measured
    tokens/s (possibly no drafts); the output is the same either way.
    """

    def __init__(
        self,
        info: CheckpointInfo,
        runner: Runner,
        tree: Tree,
        buffers: TreeBuffers | None,
        tokenizer: Any,
        adapt: bool = True,
    ) -> None:
        self.info, self._runner, self._buffers = info, runner, buffers
        self.adapt = adapt
        self._speculation: Speculation | None = None
        self.tokenizer = tokenizer
        self.model_name = info.model_name
        self.max_seq_len = info.max_seq_len
        self.has_medusa = buffers is not None
        self.num_medusa_heads = info.num_medusa_heads
        self.tree = tree
        self.tp = info.tp
        self._busy = False
        self._stop_ids = _eos_ids(info.ckpt_dir, tokenizer)

    def generate(self, prompt_ids: list[int], params: SamplingParams, medusa: bool = True) -> Generation:
        from medusa_trt.runtime.decode import Decoder

        if self._busy:
            raise InvalidInputError(
                "the engine is busy with another generation", hint="Exhaust or close() the previous Generation first."
            )
        self._check_prompt(prompt_ids)  # params checked themselves when they were made
        eos = set() if params.ignore_eos else self._stop_ids
        decoder = Decoder(
            self._runner,
            list(prompt_ids),
            params,
            eos | set(params.stop_token_ids),
            self.max_seq_len,
            self.speculation() if medusa else None,
        )
        self._busy = True
        return Generation(decoder, self._release)

    def greedy_batch(self, prompts: list[list[int]], max_tokens: list[int]) -> list[Continuation]:
        """Greedy continuations of several prompts at once, without Medusa: the same tokens as one
        ``generate`` each at temperature 0 (fp32; lower precisions may break near-ties differently), in
        one forward per step for the whole batch (``runtime.batch``). Each stops at the tokenizer's
        EOS ids or after its ``max_tokens`` (cut to the context)."""
        from medusa_trt.runtime.batch import greedy_batch

        self._check_idle("run a batch")
        if not prompts or len(max_tokens) != len(prompts) or min(max_tokens) < 1:
            raise InvalidInputError("greedy_batch needs one max_tokens >= 1 per prompt, and at least one prompt")
        for p in prompts:
            self._check_prompt(p)
        budgets = [min(m, self.max_seq_len - len(p)) for p, m in zip(prompts, max_tokens, strict=True)]
        self._busy = True
        try:
            return greedy_batch(self._runner, [list(p) for p in prompts], budgets, self._stop_ids)
        finally:
            self._busy = False

    def _check_prompt(self, prompt_ids: list[int]) -> None:
        if not prompt_ids:
            raise InvalidInputError("empty prompt", hint="Give at least one token.")
        if len(prompt_ids) >= self.max_seq_len:
            raise InvalidInputError(
                f"prompt of {len(prompt_ids)} tokens does not fit max_seq_len {self.max_seq_len}",
                hint="Shorten the prompt.",
            )
        bad = [t for t in prompt_ids if not 0 <= t < self.info.vocab_size]
        if bad:
            raise InvalidInputError(f"token id {bad[0]} is outside the vocabulary (0..{self.info.vocab_size - 1})")

    def speculation(self) -> Speculation | None:
        """The Medusa tree state shared by this engine's generations (None without heads)."""
        from medusa_trt.runtime.speculation import Speculation

        if self._buffers is None:
            return None
        current = self._speculation
        if current is None or current.full is not self._buffers:  # new, or the buffers were replaced
            self._speculation = current = Speculation(self._buffers, adapt=self.adapt)
        return current

    @property
    def tree_nodes(self) -> int:
        """Draft nodes the next Medusa step will use (the configured tree's size until adapted)."""
        speculation = self.speculation()
        return speculation.nodes if speculation is not None else 0

    def tree_choices(self) -> dict[str, int]:
        """Draft nodes adaptive speculation uses now, per decoding regime met so far (``greedy``,
        ``exact T<=1``, ...); empty without heads."""
        speculation = self.speculation()
        return speculation.choices() if speculation is not None else {}

    def _release(self) -> None:
        self._busy = False

    def rank_failures(self) -> list[str]:
        """One line per tensor-parallel rank that is no longer running (empty while all are up)."""
        return [f"tensor-parallel rank {r} {exit_text(code)}" for r, code in self._runner.dead_ranks()]

    def rank_pids(self) -> list[int]:
        """Process ids of the tp ranks this engine spawned (empty at tp 1)."""
        return self._runner.rank_pids()

    def ping(self) -> None:
        """A round trip through every rank; blocks while one is stopped or hung (call between generations)."""
        self._check_idle("ping the ranks")
        self._runner.ping()

    def abort(self) -> None:
        """Kill the tp ranks now (a collective stuck on a hung rank then fails at once); close() after."""
        self._runner.abort()

    def _check_idle(self, what: str) -> None:
        if self._busy:
            raise InvalidInputError(
                f"cannot {what} while a generation runs", hint="Exhaust or close() the Generation first."
            )

    def set_tree(self, tree: str | list[list[int]], *, adapt: bool = False) -> Tree:
        """Verify later generations with ``tree`` (a name, a YAML path or a list), validated against the
        checkpoint's heads and max_draft_len, as is unless ``adapt``; returns the tree used until now."""
        from medusa_trt.medusa.buffers import build_buffers

        self._check_idle("change the tree")
        chosen = resolve_tree(self.info, tree)
        assert chosen is not None  # resolve_tree raises for a checkpoint without heads
        buffers = build_buffers(
            chosen,
            num_heads=self.info.num_medusa_heads,
            max_draft_len=self.info.max_draft_len or None,
            device=self._runner.device,
        )
        previous, self.tree, self._buffers = self.tree, chosen, buffers
        self.adapt = adapt
        return previous

    # Below ``generate``: one forward at a time, for checking the model itself against a reference.
    def reset_cache(self, capacity: int) -> None:
        """Empty the KV cache on every rank and size it for ``capacity`` tokens."""
        self._check_idle("reset the KV cache")
        self._runner.alloc(capacity)

    def forward(self, token_ids: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
        """Logits [T, V] float32 for ``token_ids`` at ``positions`` [T], causal over the KV cache, whose
        entries for these tokens it writes (after :meth:`reset_cache`)."""
        self._check_idle("run a forward")
        return self._runner.forward(token_ids, positions)

    def head_logits(self, row: int) -> torch.Tensor:
        """Logits [K, V] of every Medusa head at ``row`` of the last :meth:`forward`."""
        self._check_idle("run the heads")
        if not self.num_medusa_heads:
            raise InvalidInputError(f"{self.info.ckpt_dir} has no Medusa heads")
        return self._runner.heads(row)

    def close(self) -> None:
        """Stop the tp worker processes (idempotent)."""
        self._runner.close()

    def __enter__(self) -> ReferenceEngine:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def exit_text(code: int | None) -> str:
    """How a process ended, from its exit code (negative: the signal that killed it; None: still running)."""
    import signal

    if code is None:
        return "is not running"
    if code < 0:
        try:
            return f"was killed by {signal.Signals(-code).name}"
        except ValueError:
            return f"was killed by signal {-code}"
    return f"exited with code {code}"


def _eos_ids(ckpt_dir: Path, tokenizer: Any) -> set[int]:
    ids: set[int] = set()
    if tokenizer is not None and tokenizer.eos_token_id is not None:
        ids.add(int(tokenizer.eos_token_id))
    gen = ckpt_dir / "generation_config.json"
    if gen.is_file():
        doc = fsio.read_json(gen, "generation config")
        eos = doc.get("eos_token_id") if isinstance(doc, dict) else None
        ids.update(eos if isinstance(eos, list) else [] if eos is None else [int(eos)])
    return ids


def load_tokenizer(*dirs: Path) -> Any:
    """The tokenizer saved in the first of ``dirs`` that has one, else None."""
    for d in dirs:
        if (d / "tokenizer.json").is_file() or (d / "tokenizer_config.json").is_file():
            from transformers import AutoTokenizer

            for name in ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json"):
                if (d / name).exists():
                    fsio.read_json(d / name, name)  # bounded size and nesting, exit 2 naming the file
            try:
                return AutoTokenizer.from_pretrained(str(d))
            except (OSError, ValueError, RuntimeError, TypeError, KeyError) as e:
                raise CheckpointError(
                    f"{d}: the tokenizer does not load ({e.__class__.__name__}: {e})".splitlines()[0],
                    hint="Re-run `medusa-trt convert` (or build) from a model whose tokenizer loads.",
                ) from e
    return None


def resolve_tree(info: CheckpointInfo, tree: str | list[list[int]] | None) -> Tree | None:
    """The tree to use (validated against heads and max_draft_len), or None without Medusa heads."""
    from medusa_trt.runtime.config import default_tree

    if info.num_medusa_heads == 0:
        if tree is not None:
            raise TreeError(
                f"{info.ckpt_dir} has no Medusa heads, so a tree cannot be used",
                hint="Convert with --medusa HEADS, or drop --tree.",
            )
        return None
    chosen = default_tree(info) if tree is None else load_tree(tree)
    return validate_tree(
        chosen,
        num_heads=info.num_medusa_heads,
        max_draft_len=info.max_draft_len or None,
        name=tree_name(tree) if tree is not None else "(the engine's)",
    )


def load_engine(
    path: str | Path,
    *,
    device: str = "cpu",
    tree: str | list[list[int]] | None = None,
    adapt: bool | None = None,
) -> ReferenceEngine:
    """Load a converted checkpoint dir (or an engine dir with medusa-trt.json) for generation.

    The tree is validated against the heads before any weight is read; tp > 1 spawns tp-1 ranks.
    ``adapt`` (default: on unless ``tree`` is given) lets Medusa steps use the best nested subtree.
    """
    from medusa_trt.errors import MissingDependencyError
    from medusa_trt.runtime.config import read_checkpoint

    info = read_checkpoint(path)
    chosen = resolve_tree(info, tree)
    if device not in ("cpu", "cuda") and not device.startswith("cuda:"):
        raise InvalidInputError(f"unknown device '{device}'", hint="Use cpu or cuda.")
    import torch

    if device.startswith("cuda") and not torch.cuda.is_available():
        raise MissingDependencyError(
            "--device cuda but no CUDA GPU is visible to torch",
            hint="Use --device cpu, or install a CUDA build of torch.",
        )
    from medusa_trt.medusa.buffers import build_buffers
    from medusa_trt.runtime.tp import Runner

    tokenizer = load_tokenizer(info.ckpt_dir, Path(path))
    runner = Runner(info, device)
    try:  # the tp ranks are running now: nothing below may fail without stopping them
        buffers = None
        if chosen is not None:
            buffers = build_buffers(
                chosen, num_heads=info.num_medusa_heads, max_draft_len=info.max_draft_len or None, device=runner.device
            )
        return ReferenceEngine(
            info, runner, chosen or [], buffers, tokenizer, adapt=tree is None if adapt is None else adapt
        )
    except BaseException:
        runner.close()
        raise
