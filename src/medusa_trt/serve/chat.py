"""Chat messages to prompt ids: the model's template rendered under a time budget, and message text
that never becomes control tokens.

A chat template is a program shipped with the model. Jinja rendering on a thread cannot be stopped,
so one that never ends (nested ``range(100000)`` loops) would hold the server's prompt worker
forever. It runs instead in a child process (``template_child.py``: transformers' own sandboxed
renderer, under an address-space limit) that is killed when a request's rendering outlives
``timeout_s`` and started again for the next one. The measured cost is in benchmarks/faults.py.

Text typed into a message must not turn into control tokens (``<|eot_id|>`` in a user's message
would forge the end of the turn). As transformers' ``sanitize_control_tokens`` does (transformers 5,
``utils/chat_template_utils.py``, ``mark_control_tokens`` / ``encode_marked_chat``), every control
token in a message is wrapped in markers before rendering; after rendering, a marked token is
encoded as plain text and everything else, the template's own markup included, as usual. The
markers are Unicode noncharacters (U+FDD0, U+FDD1: reserved for internal use), removed from the
input first so that nobody can forge a marked span.
"""

from __future__ import annotations

import contextlib
import logging
import os
import pickle
import re
import select
import struct
import subprocess
import sys
import threading
import time
from functools import partial
from pathlib import Path
from typing import Any

logger = logging.getLogger(__name__)

TEMPLATE_TIMEOUT_S = 10.0  # a real template renders a 4 MB chat in well under a second
START_TIMEOUT_S = 120.0  # the child imports Jinja and transformers' renderer: seconds on a busy host
CHILD_MAX_BYTES = 2 << 30  # the renderer's address-space limit
_START, _END = "\ufdd0", "\ufdd1"
_HEADER = struct.Struct(">Q")
_CHILD = Path(__file__).with_name("template_child.py")


class TemplateError(Exception):
    """The template refused the messages (its ``raise_exception``, a bad role order...): the client's fault."""


class PromptTooLong(TemplateError):
    """The rendered chat is longer than any prompt that fits the context (``characters`` long)."""

    def __init__(self, characters: int) -> None:
        super().__init__(f"the rendered chat has {characters} characters")
        self.characters = characters


class TemplateBroken(Exception):
    """The template did not finish within its budget, or its renderer died: the model's fault."""


def template_source(tokenizer: Any) -> str:
    """Where the chat template comes from, for messages: a file in the tokenizer's directory."""
    where = Path(str(getattr(tokenizer, "name_or_path", "") or "."))
    for name in ("chat_template.jinja", "chat_template.json", "tokenizer_config.json"):
        if (where / name).is_file():
            return str(where / name)
    return f"{where} (chat_template)"


def control_tokens(tokenizer: Any, template: str) -> list[str]:
    """Tokens a message must not produce: every special added token, and every other added token the
    template writes itself (transformers' default rule), whitespace tokens excepted. Longest first, so
    that a token is matched before the tokens it contains."""
    found = {
        t.content
        for t in getattr(tokenizer, "added_tokens_decoder", {}).values()
        if t.content and (t.special or (t.content in template and not t.content.isspace()))
    }
    return sorted(found, key=len, reverse=True)


class ChatPrompt:
    """Renders and encodes chats for one tokenizer; used from one thread at a time (the prompt worker)."""

    def __init__(self, tokenizer: Any, timeout_s: float = TEMPLATE_TIMEOUT_S, max_chars: int = 1 << 26) -> None:
        self.tokenizer, self.timeout_s, self.max_chars = tokenizer, timeout_s, max_chars
        get = getattr(tokenizer, "get_chat_template", None)
        self.template: str = str(get() if get is not None else tokenizer.chat_template)
        self.source = template_source(tokenizer)
        tokens = control_tokens(tokenizer, self.template)
        alternatives = "|".join(map(re.escape, tokens)) or "(?!)"  # (?!) never matches
        self._control = re.compile(alternatives)
        self._marked = re.compile(f"{_START}({alternatives}){_END}|[{_START}{_END}]")
        # what apply_chat_template passes the template besides the messages (bos_token, eos_token...)
        self._kwargs = {k: v for k, v in dict(getattr(tokenizer, "special_tokens_map", {}) or {}).items()}
        self._newline = list(tokenizer.encode("\n", add_special_tokens=False))
        self._lock = threading.Lock()
        self._child: subprocess.Popen[bytes] | None = self._spawn()
        self._ready = False
        # a started spare, from the first request on: it takes over at once when a renderer is stopped
        # (importing the renderer takes seconds), so a template that keeps running over costs each
        # request its budget only
        self._spare: subprocess.Popen[bytes] | None = None
        self.restarts = 0

    # --- the public surface ----------------------------------------------------------------------
    def ids(self, messages: list[dict[str, str]]) -> list[int]:
        """Prompt ids for ``messages`` (``role``/``content`` strings), ending with the assistant header."""
        return self.encode(self.render([self.mark(m) for m in messages]))

    def render(self, messages: list[dict[str, str]]) -> str:
        """The template's text for ``messages``; raises TemplateError or TemplateBroken."""
        with self._lock:
            self._wait_ready()
            child = self._child
            assert child is not None and child.stdin is not None
            t0 = time.monotonic()
            try:
                _write(child.stdin, (messages, True))
                status, value = self._read(child, t0 + self.timeout_s)
            except TimeoutError:
                self._restart()
                raise TemplateBroken(
                    f"the chat template ({self.source}) did not finish within {self.timeout_s:g} s; it was stopped"
                ) from None
            except (EOFError, OSError, pickle.UnpicklingError) as e:
                code = child.poll()
                self._restart()
                raise TemplateBroken(
                    f"the chat template's renderer ({self.source}) died ({_exit_text(code, e)})"
                ) from None
        if status == "long":
            raise PromptTooLong(int(value))
        if status == "broken":
            raise TemplateBroken(f"the chat template ({self.source}) failed: {value}")
        if status != "ok":
            raise TemplateError(f"the chat template ({self.source}) failed: {value}")
        return str(value)

    def encode(self, text: str) -> list[int]:
        """Ids of a rendered chat: marked control tokens as plain text, the rest as the tokenizer reads it."""
        pieces = self._marked.split(text)  # [text, marked token or None, text, ...]
        ids = list(self.tokenizer.encode(pieces[0], add_special_tokens=False))
        for i, piece in enumerate(pieces[1:], start=1):
            if not piece:
                continue  # a lone marker (a template's split() parted a pair): it still breaks the text
            as_text = i % 2 == 1
            got = self._piece(piece, as_text)
            if as_text and self.tokenizer.convert_tokens_to_ids(piece) in got:
                raise TemplateError(f"{piece!r} cannot be sent as text: this tokenizer makes it from plain text")
            ids += got
        return ids

    def close(self) -> None:
        with self._lock:
            self._stop()

    # --- helpers ---------------------------------------------------------------------------------
    def mark(self, message: dict[str, str]) -> dict[str, str]:
        """``message`` with the control tokens in its values marked (and any markers it had removed)."""
        return {k: self._mark(v) for k, v in message.items()}

    def _mark(self, value: str) -> str:
        value = value.replace(_START, "").replace(_END, "")
        return self._control.sub(lambda m: f"{_START}{m.group(0)}{_END}", value)

    def _piece(self, piece: str, as_text: bool) -> list[int]:
        if as_text:
            encode = partial(self.tokenizer.encode, add_special_tokens=False, split_special_tokens=True)
        else:
            encode = partial(self.tokenizer.encode, add_special_tokens=False)
        # after a newline, so a SentencePiece tokenizer adds no prefix space mid-text (as transformers does)
        ids = list(encode("\n" + piece))
        if ids[: len(self._newline)] == self._newline:
            return ids[len(self._newline) :]
        return list(encode(piece))

    def _spawn(self) -> subprocess.Popen[bytes]:
        # run by path, with no directory of ours (or the cwd) on sys.path: nothing here can shadow a module
        boot = f"import runpy, sys; sys.path.pop(0); runpy.run_path({str(_CHILD)!r}, run_name='__main__')"
        # its own session: a Ctrl-C at the terminal reaches the server, which stops the renderer itself,
        # instead of a KeyboardInterrupt traceback from the renderer (it dies with the server: PDEATHSIG)
        child = subprocess.Popen(
            [sys.executable, "-c", boot], stdin=subprocess.PIPE, stdout=subprocess.PIPE, start_new_session=True
        )
        assert child.stdin is not None
        setup = {"template": self.template, "kwargs": self._kwargs, "max_chars": self.max_chars}
        _write(child.stdin, {**setup, "max_bytes": CHILD_MAX_BYTES})
        return child

    def _wait_ready(self) -> None:
        if self._child is None or self._child.poll() is not None:
            self._replace()
        if self._ready:
            return
        assert self._child is not None
        try:
            status, value = self._read(self._child, time.monotonic() + START_TIMEOUT_S)
        except (TimeoutError, EOFError, OSError) as e:
            code = self._child.poll()
            self._stop()
            raise TemplateBroken(f"the chat template's renderer did not start ({_exit_text(code, e)})") from None
        if status != "ready":
            self._stop()
            raise TemplateBroken(f"the chat template's renderer did not start: {value}")
        self._ready = True
        if self._spare is None:
            self._spare = self._spawn()

    def _read(self, child: subprocess.Popen[bytes], deadline: float) -> Any:
        assert child.stdout is not None
        fd = child.stdout.fileno()
        head = _read_exactly(fd, _HEADER.size, deadline)
        (size,) = _HEADER.unpack(head)
        return pickle.loads(_read_exactly(fd, size, deadline))

    def _restart(self) -> None:
        self.restarts += 1
        self._replace()
        if self._spare is None:
            self._spare = self._spawn()

    def _replace(self) -> None:
        """Stop the current renderer; the spare (if any) or a new one takes its place."""
        _kill(self._child)
        spare, self._spare = self._spare, None
        self._child = spare if spare is not None and spare.poll() is None else self._spawn()
        self._ready = False

    def _stop(self) -> None:
        _kill(self._child)
        _kill(self._spare)
        self._child = self._spare = None


def _kill(child: subprocess.Popen[bytes] | None) -> None:
    if child is None:
        return
    with contextlib.suppress(ProcessLookupError):
        child.kill()
    child.wait()
    for stream in (child.stdin, child.stdout):
        if stream is not None:
            with contextlib.suppress(OSError):
                stream.close()


def _write(stream: Any, obj: Any) -> None:
    data = pickle.dumps(obj, protocol=pickle.HIGHEST_PROTOCOL)
    stream.write(_HEADER.pack(len(data)) + data)
    stream.flush()


def _read_exactly(fd: int, n: int, deadline: float) -> bytes:
    """``n`` bytes from ``fd``, or TimeoutError at ``deadline``, or EOFError if the child closed it."""
    parts: list[bytes] = []
    while n > 0:
        left = deadline - time.monotonic()
        if left <= 0 or not select.select([fd], [], [], left)[0]:
            raise TimeoutError
        chunk = os.read(fd, min(n, 1 << 20))
        if not chunk:
            raise EOFError("the renderer closed its output")
        parts.append(chunk)
        n -= len(chunk)
    return b"".join(parts)


def _exit_text(code: int | None, e: BaseException) -> str:
    if code is not None and code < 0:
        return f"killed by signal {-code}"
    if code is not None:
        return f"exit status {code}"
    return type(e).__name__
