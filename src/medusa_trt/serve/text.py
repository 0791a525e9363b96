"""Token ids to text for the server: incremental detokenization and stop strings.

Byte-level BPE splits multi-byte characters across tokens, so a token's own decode can be a
replacement character. We decode the whole completion so far and emit the new suffix, holding
back text that ends in an incomplete character (U+FFFD) or could still become a stop string.
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
        self._stop = [s for s in stop if s]
        self._hold = max((len(s) for s in self._stop), default=1) - 1  # a stop string may be half-seen
        self.text = ""  # decoded completion so far (cut at a stop string once one matched)
        self.emitted = 0  # characters of self.text already handed out
        self.stopped = False

    def _decode(self) -> str:
        return str(self._tok.decode(self._ids, skip_special_tokens=True, clean_up_tokenization_spaces=False))

    def push(self, token_ids: Sequence[int]) -> str:
        if self.stopped:
            return ""
        self._ids.extend(int(t) for t in token_ids)
        text = self._decode()
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
