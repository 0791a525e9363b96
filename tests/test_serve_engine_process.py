"""The server's engine in its own process (``serve.engine_process``): the same tokens and stats as the
engine in this process, cancellation, errors that keep their class and message, a load that fails as
load_engine fails, and an engine process that dies while a generation waits on it."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import psutil
import pytest

from medusa_trt.errors import CheckpointError, EngineFailedError, InvalidInputError
from medusa_trt.runtime import SamplingParams, load_engine
from medusa_trt.runtime.types import SamplingError
from medusa_trt.serve.engine_process import EngineProcess, _portable
from tests.helpers.checkpoints import make_checkpoint

PROMPTS = [[3, 4, 5], [7, 1, 9, 2]]


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory: pytest.TempPathFactory, tiny_llama: Path, tiny_heads: Path) -> Path:
    return make_checkpoint(tiny_llama, tmp_path_factory.mktemp("ep") / "ck", heads=tiny_heads)


@pytest.fixture(scope="module")
def remote(ckpt: Path) -> Iterator[EngineProcess]:
    with EngineProcess(ckpt, threads=1) as engine:
        yield engine


def _tokens(gen: Iterator[object]) -> list[list[int]]:
    return [list(c.token_ids) for c in gen]  # type: ignore[attr-defined]


@pytest.mark.parametrize("medusa", [True, False])
def test_same_chunks_and_stats_as_the_engine_in_process(ckpt: Path, remote: EngineProcess, medusa: bool) -> None:
    params = SamplingParams(max_tokens=24, ignore_eos=True)
    with load_engine(ckpt) as local:
        assert (remote.tp, remote.max_seq_len, remote.num_medusa_heads) == (
            1,
            local.max_seq_len,
            local.num_medusa_heads,
        )
        assert remote.has_medusa and remote.tree == local.tree and remote.torch_threads == 1
        for ids in PROMPTS:
            here, there = local.generate(ids, params, medusa=medusa), remote.generate(ids, params, medusa=medusa)
            assert _tokens(there) == _tokens(here)  # chunk by chunk: the same steps
            assert there.stats is not None and here.stats is not None
            assert (there.stats.num_steps, there.stats.completion_tokens, there.stats.accepted_per_depth) == (
                here.stats.num_steps,
                here.stats.completion_tokens,
                here.stats.accepted_per_depth,
            )
        if medusa:
            assert remote.tree_choices() == local.tree_choices() != {}


def test_the_tokenizer_comes_from_the_engine_process_and_the_server_never_imports_torch(ckpt: Path) -> None:
    """The child pickles the tokenizer it loaded; the server's side unpickles it instead of running
    AutoTokenizer, which imports torch and the model classes (seconds of start-up it does not need)."""
    code = (
        "import sys\nfrom pathlib import Path\nfrom medusa_trt.serve.engine_process import EngineProcess\n"
        "from medusa_trt.runtime.api import load_tokenizer\n"
        "with EngineProcess(Path(sys.argv[1]), threads=1) as e:\n"
        "    torch_before = 'torch' in sys.modules\n"
        "    text = 'def f(x):\\n    return x'\n"
        "    got = (e.tokenizer.encode(text), e.tokenizer.eos_token_id, e.tokenizer.chat_template)\n"
        "want_tok = load_tokenizer(Path(sys.argv[1]))\n"
        "want = (want_tok.encode(text), want_tok.eos_token_id, want_tok.chat_template)\n"
        "print(torch_before, got == want, type(e.tokenizer) is type(want_tok))\n"
    )
    out = subprocess.run([sys.executable, "-c", code, str(ckpt)], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == ["False", "True", "True"], out.stdout


def test_a_tokenizer_that_does_not_travel_is_loaded_by_the_server() -> None:
    from medusa_trt.serve.engine_process import _pickled, _unpickled

    assert _pickled(None) is None and _pickled(lambda: 0) is None  # a lambda does not pickle
    assert _unpickled(None) is None and _unpickled(b"not a pickle") is None
    assert _unpickled(_pickled({"vocab": 3})) == {"vocab": 3}


def test_cancel_mid_generation_frees_the_engine(remote: EngineProcess) -> None:
    params = SamplingParams(max_tokens=40, ignore_eos=True)
    whole = _tokens(remote.generate(PROMPTS[0], params))
    gen = remote.generate(PROMPTS[0], params)
    first = next(gen)
    gen.close()  # the child stops after the step in flight; what it sent meanwhile is dropped
    assert gen.stats is None and list(first.token_ids) == whole[0]
    assert _tokens(remote.generate(PROMPTS[0], params)) == whole  # the pipe holds nothing stale


def test_errors_keep_their_class_and_message(ckpt: Path, remote: EngineProcess) -> None:
    gen = remote.generate([10**6], SamplingParams(max_tokens=3))
    with pytest.raises(InvalidInputError, match="outside the vocabulary") as got:
        next(gen)
    with load_engine(ckpt) as local, pytest.raises(InvalidInputError) as want:
        local.generate([10**6], SamplingParams(max_tokens=3))
    assert str(got.value) == str(want.value)
    assert _tokens(remote.generate(PROMPTS[1], SamplingParams(max_tokens=4, ignore_eos=True)))  # still serving
    # an error whose constructor takes other arguments than (message, hint) does not pickle back as itself
    odd = _portable(SamplingError("top_p", "top_p 2: must be in (0, 1]"))
    assert type(odd) is InvalidInputError and str(odd) == "top_p 2: must be in (0, 1]"
    assert type(_portable(KeyError("x"))) is KeyError


def test_a_load_that_fails_raises_as_load_engine_and_leaves_no_process(tmp_path: Path, ckpt: Path) -> None:
    bad = tmp_path / "bad"
    shutil.copytree(ckpt, bad)
    rank = bad / "rank0.safetensors"
    rank.write_bytes(b"\xff" * rank.stat().st_size)  # the size the config expects, bytes that are no safetensors
    with pytest.raises(CheckpointError) as want:
        load_engine(bad)
    before = set(psutil.Process().children(recursive=True))
    with pytest.raises(CheckpointError) as got:
        EngineProcess(bad)
    assert type(got.value) is type(want.value) and str(got.value) == str(want.value)
    assert got.value.hint == want.value.hint and got.value.hint
    left = [p for p in psutil.Process().children(recursive=True) if p not in before and "spawn_main" in p.cmdline()]
    _, alive = psutil.wait_procs(left, timeout=10)
    assert not alive


def test_an_engine_process_killed_mid_generation(ckpt: Path) -> None:
    engine = EngineProcess(ckpt, threads=1)
    try:
        assert engine.rank_failures() == []
        gen = engine.generate(PROMPTS[0], SamplingParams(max_tokens=200, ignore_eos=True))
        next(gen)
        os.kill(engine._proc.pid, signal.SIGKILL)  # type: ignore[arg-type]
        with pytest.raises(EngineFailedError, match="the engine process was killed by SIGKILL"):
            for _ in gen:  # what it sent before it died, then the loss
                pass
        assert engine.rank_failures() == ["the engine process was killed by SIGKILL"]
    finally:
        engine.close()
    assert engine.rank_failures() == []  # closed: no longer a failure to report
