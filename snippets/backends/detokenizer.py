"""Part 4 of llm_server.py: token ids to text, one token at a time, for streaming.

Decoding the whole answer again at every token costs time that grows with the square of its
length; decoding only the newest token breaks multi-byte characters and, with some tokenizers,
the spaces between words. This keeps a short window instead, and holds back what is not final
yet: half of a UTF-8 character, or a tail that could be the start of a stop string.
"""


# --8<-- [start:detokenizer]
class Detokenizer:
    """Token ids to text, one token at a time, without re-decoding the whole answer.

    It decodes a short window (the last few tokens plus one of context, since some tokenizers
    drop a leading space at the start of a decode), holds back an incomplete UTF-8 character, and
    holds back a tail that could be the start of a stop string. `add` returns the text that is
    final; `stopped` turns True at the first stop string, whose text is never sent.
    """

    def __init__(self, tokenizer, stops: tuple[str, ...]):
        self.tokenizer, self.stops = tokenizer, stops
        self.ids: list[int] = []
        self.prefix_offset = self.read_offset = 0
        self.pending = ""  # decoded, not yet sent: a possible stop string's beginning
        self.stopped = False

    def add(self, token_id: int) -> str:
        self.ids.append(token_id)
        before = self.decode(self.ids[self.prefix_offset : self.read_offset])
        after = self.decode(self.ids[self.prefix_offset :])
        if after.endswith("\ufffd"):  # half of a multi-byte character: wait for the rest
            return ""
        self.prefix_offset, self.read_offset = self.read_offset, len(self.ids)
        self.pending += after[len(before) :]
        return self.release()

    def release(self) -> str:
        """Cut at a complete stop string; otherwise send all but a possible stop-string start."""
        found = [i for i in (self.pending.find(stop) for stop in self.stops) if i >= 0]
        if found:
            self.stopped = True
            text, self.pending = self.pending[: min(found)], ""
            return text
        keep = max((self.held_back(stop) for stop in self.stops), default=0)
        cut = len(self.pending) - keep
        text, self.pending = self.pending[:cut], self.pending[cut:]
        return text

    def held_back(self, stop: str) -> int:
        """How many trailing characters could be the start of `stop`."""
        return next((k for k in range(len(stop) - 1, 0, -1) if self.pending.endswith(stop[:k])), 0)

    def flush(self) -> str:
        """At the end of generation, what was held back is final."""
        text, self.pending = self.pending, ""
        return text

    def decode(self, ids: list[int]) -> str:
        return self.tokenizer.decode(ids, skip_special_tokens=True)


# --8<-- [end:detokenizer]
