"""Token ids to text as they stream: incremental detokenization and stop strings.

The one text-streaming helper: the server's responses and `medusa-trt run --prompt` both use it.
Byte-level BPE splits multi-byte characters across tokens, so a token's own decode can be a
replacement character. Text is handed out only once it can no longer change: a trailing incomplete
character (U+FFFD) or a possible start of a stop string is held back until later tokens settle it.

Each push decodes only the tokens since the last character boundary, with the tokens before that
boundary as context (a SentencePiece decoder drops the leading space of the first token it sees);
re-decoding the whole completion on every step would cost time quadratic in its length.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

_REPLACEMENT = "\ufffd"


class TextStream:
    """Accumulates completion token ids and hands out text deltas that never need retracting.

    ``push(ids)`` returns the new text that is safe to show; ``finish()`` returns what was held back.
    After a stop string matched, ``stopped`` is True and the text ends before the stop string.

    Work is linear in the completion: only a window (the text not yet handed out, plus the last
    ``hold`` characters before it) is kept as one string and searched for stop strings; the rest
    lives in a list of pieces, joined once when ``text`` is read. The server bounds the stop list
    (``serve.protocol``): the search costs ``len(stop) x window`` per push.
    """

    def __init__(self, tokenizer: Any, stop: Sequence[str] = ()) -> None:
        self._tok = tokenizer
        self._fast = _backend(tokenizer)
        self._ids: list[int] = []
        self._context = 0  # ids[_context:_settled]: the last settled piece, decoded again as context
        self._settled = 0  # ids[:_settled] decode to the pieces and end on a character boundary
        self._pieces: list[str] = []  # the settled text, piece by piece
        self._settled_len = 0
        self._window = ""  # the settled text from index _base on (the rest is handed out and searched)
        self._base = 0
        self._tail = ""  # the text of the ids after the last character boundary
        self._stop = [s for s in stop if s]
        self._hold = max((len(s) for s in self._stop), default=1) - 1  # a stop string may be half-seen
        self._end: int | None = None  # where the text ends once a stop string matched
        self.emitted = 0  # characters of the text already handed out
        self.stopped = False

    @property
    def text(self) -> str:
        """The decoded completion so far (cut at a stop string once one matched)."""
        return ("".join(self._pieces) + self._tail)[: self._end]

    def _decode(self, ids: Sequence[int]) -> str:
        if self._fast is not None:
            return str(self._fast.decode(ids, skip_special_tokens=True))
        return str(self._tok.decode(ids, skip_special_tokens=True, clean_up_tokenization_spaces=False))

    def _advance(self) -> None:
        """Decode the ids since the last character boundary (with the piece before it as context)."""
        context = self._decode(self._ids[self._context : self._settled])
        tail = self._decode(self._ids[self._context :])[len(context) :]
        if tail and not tail.endswith(_REPLACEMENT):  # a boundary: the next decode starts here
            self._context, self._settled = self._settled, len(self._ids)
            self._pieces.append(tail)
            self._settled_len += len(tail)
            self._window += tail
            tail = ""
        self._tail = tail

    def push(self, token_ids: Sequence[int]) -> str:
        if self.stopped:
            return ""
        self._ids.extend(int(t) for t in token_ids)
        self._advance()
        window = self._window + self._tail  # the text from index _base on
        if self._stop:
            # search from just before the emitted text: a stop string may straddle two pushes
            start = max(self.emitted - self._hold, self._base) - self._base
            hits = [i for i in (window.find(s, start) for s in self._stop) if i >= 0]
            if hits:
                self._end = self._base + min(hits)
                self.stopped = True
                return self._take(window, self._end)
        safe = self._base + len(window)
        while safe > self.emitted and window[safe - 1 - self._base] == _REPLACEMENT:
            safe -= 1  # an incomplete multi-byte character: wait for its next bytes
        return self._take(window, max(self.emitted, safe - (self._hold if self._stop else 0)))

    def finish(self) -> str:
        """The held-back rest (the generation ended: no more bytes will come)."""
        window = self._window + self._tail
        return self._take(window, self._base + len(window) if self._end is None else self._end)

    def _take(self, window: str, upto: int) -> str:
        delta = window[self.emitted - self._base : max(upto - self._base, 0)]
        self.emitted = max(self.emitted, upto)
        # keep only what a later search or delta can still need: the last `hold` handed-out characters on
        keep = min(max(self.emitted - self._hold, self._base), self._settled_len)
        self._window, self._base = self._window[keep - self._base :], keep
        return delta


def _backend(tokenizer: Any) -> Any:
    """The Rust tokenizer behind a transformers fast tokenizer whose decode is its backend's (no cleanup
    is asked for), else None. Calling it directly skips ~7 us of Python wrapping per decode; a
    tokenizer class with its own ``_decode`` keeps going through it."""
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is None or not hasattr(backend, "decode"):
        return None
    try:
        from transformers import PreTrainedTokenizerFast
    except ImportError:
        return None
    decode = getattr(type(tokenizer), "_decode", None)
    return backend if decode is getattr(PreTrainedTokenizerFast, "_decode", object()) else None
