"""The chat-template renderer's child process: run by path (``serve.chat`` starts it), so it imports
only Jinja and transformers' renderer, never this package, torch or the model.

It renders with transformers' own ``render_jinja_template`` (the sandboxed Jinja environment that
``apply_chat_template`` uses), under an address-space limit, and answers over stdin/stdout in
frames: an 8-byte big-endian length, then a pickle. The parent is the only peer (it started us).

    parent -> child   {"template": str, "kwargs": dict, "max_chars": int, "max_bytes": int}   once
    child  -> parent  ("ready", None) | ("error", message)
    parent -> child   (messages, add_generation_prompt)                                         per request
    child  -> parent  ("ok", text) | ("error", message) | ("broken", message) | ("long", characters)
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import pickle
import resource
import signal
import struct
import sys
from typing import Any, BinaryIO

_HEADER = struct.Struct(">Q")


def read_frame(stream: BinaryIO) -> Any:
    head = stream.read(_HEADER.size)
    if len(head) < _HEADER.size:
        raise EOFError("the peer closed the pipe")
    (size,) = _HEADER.unpack(head)
    return pickle.loads(stream.read(size))


def write_frame(stream: BinaryIO, obj: Any) -> None:
    data = pickle.dumps(obj, protocol=pickle.HIGHEST_PROTOCOL)
    stream.write(_HEADER.pack(len(data)) + data)
    stream.flush()


def _render(template: str, kwargs: dict[str, Any], messages: list[dict[str, Any]], generation_prompt: bool) -> str:
    from transformers.utils.chat_template_utils import render_jinja_template

    rendered, _ = render_jinja_template(
        conversations=[messages], chat_template=template, add_generation_prompt=generation_prompt, **kwargs
    )
    return str(rendered[0])


def _die_with_parent() -> None:
    """Linux: be killed when the server goes, even mid-render (an endless template never reads EOF)."""
    parent = os.getppid()
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG (prctl(2))
    if os.getppid() != parent:  # the parent died before the call took effect
        os._exit(1)


def main() -> None:
    _die_with_parent()
    stdin, stdout = sys.stdin.buffer, sys.stdout.buffer
    setup = read_frame(stdin)
    # imported now, not on the first request's budget; the template itself only runs on requests
    from transformers.utils.chat_template_utils import render_jinja_template  # noqa: F401

    write_frame(stdout, ("ready", None))
    # a template that builds a huge string fails with MemoryError here instead of swapping the host
    resource.setrlimit(resource.RLIMIT_AS, (setup["max_bytes"], setup["max_bytes"]))
    while True:
        try:
            messages, generation_prompt = read_frame(stdin)
        except EOFError:
            return
        try:
            text = _render(setup["template"], setup["kwargs"], messages, generation_prompt)
        except MemoryError:
            write_frame(stdout, ("broken", "the template used more memory than the renderer's limit"))
            continue
        except Exception as e:  # raise_exception() in the template, an undefined variable...
            write_frame(stdout, ("error", f"{type(e).__name__}: {e}"))
            continue
        if len(text) > setup["max_chars"]:
            write_frame(stdout, ("long", len(text)))
            continue
        write_frame(stdout, ("ok", text))


if __name__ == "__main__":
    main()
