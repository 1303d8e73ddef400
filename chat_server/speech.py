"""Speech chunks (``hello.options.speech_chunks``): a reply's text cut at phrase ends,
for text-to-speech front-ends. Pure: text in, deltas out; the session owns the timer
that calls ``flush`` after ``speech_max_wait_ms`` so a long sentence still flows.
"""

from __future__ import annotations

import re
import uuid

from protocol.messages import Delta

# Where a phrase may end for text-to-speech: Japanese/full-width punctuation at once,
# English punctuation only when followed by a space (so "3.14" or "e.g" stay whole).
PHRASE_END = re.compile(r"[。、！？，．…\n]|[.,;:!?](?:\s+)")


class SpeechChunker:
    """One reply's text held back until a phrase ends."""

    def __init__(self, conversation_id: uuid.UUID, turn_id: uuid.UUID, offset: int) -> None:
        self.conversation_id = conversation_id
        self.turn_id = turn_id
        self.offset = offset  # where ``pending`` starts in the reply
        self.pending = ""

    def push(self, text: str) -> Delta | None:
        """Add the reply's next text; the delta up to the last phrase end, if any."""
        self.pending += text
        cut = 0
        for match in PHRASE_END.finditer(self.pending):
            cut = match.end()
        return self._emit(cut)

    def flush(self) -> Delta | None:
        """Everything held (the maximum wait passed, or the reply ended)."""
        return self._emit(len(self.pending))

    def _emit(self, cut: int) -> Delta | None:
        if not cut:
            return None
        text, self.pending = self.pending[:cut], self.pending[cut:]
        delta = Delta(
            conversation_id=self.conversation_id,
            turn_id=self.turn_id,
            offset=self.offset,
            text=text,
        )
        self.offset += cut
        return delta
