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
    """

    def __init__(self, tokenizer: Any, stop: Sequence[str] = ()) -> None:
        self._tok = tokenizer
        self._ids: list[int] = []
        self._context = 0  # ids[_context:_settled]: the last settled piece, decoded again as context
        self._settled = 0  # ids[:_settled] decode to _settled_text and end on a character boundary
        self._settled_text = ""
        self._stop = [s for s in stop if s]
        self._hold = max((len(s) for s in self._stop), default=1) - 1  # a stop string may be half-seen
        self.text = ""  # decoded completion so far (cut at a stop string once one matched)
        self.emitted = 0  # characters of self.text already handed out
        self.stopped = False

    def _decode(self, ids: Sequence[int]) -> str:
        return str(self._tok.decode(ids, skip_special_tokens=True, clean_up_tokenization_spaces=False))

    def _full_text(self) -> str:
        """The text of every id so far, decoding only those since the last character boundary."""
        context = self._decode(self._ids[self._context : self._settled])
        tail = self._decode(self._ids[self._context :])[len(context) :]
        text = self._settled_text + tail
        if tail and not tail.endswith(_REPLACEMENT):  # a boundary: the next decode starts here
            self._context, self._settled, self._settled_text = self._settled, len(self._ids), text
        return text

    def push(self, token_ids: Sequence[int]) -> str:
        if self.stopped:
            return ""
        self._ids.extend(int(t) for t in token_ids)
        text = self._full_text()
        if self._stop:
            # search from just before the emitted text: a stop string may straddle two pushes
            start = max(0, self.emitted - self._hold)
            hits = [i for i in (text.find(s, start) for s in self._stop) if i >= 0]
            if hits:
                self.text = text[: min(hits)]
                self.stopped = True
                return self._take(len(self.text))
        self.text = text
        safe = len(text)
        while safe > self.emitted and text[safe - 1] == _REPLACEMENT:
            safe -= 1  # an incomplete multi-byte character: wait for its next bytes
        return self._take(max(self.emitted, safe - (self._hold if self._stop else 0)))

    def finish(self) -> str:
        """The held-back rest (the generation ended: no more bytes will come)."""
        return self._take(len(self.text))

    def _take(self, upto: int) -> str:
        delta = self.text[self.emitted : upto]
        self.emitted = max(self.emitted, upto)
        return delta
