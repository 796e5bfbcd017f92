"""An optional part of llm_server.py: prefix caching, an admission hook of its engine.

The keys and values of a prompt's first tokens depend only on those tokens, so a request that
starts with a system prompt seen before can start from a copy of that prompt's KV cache and
prefill only what follows. What GPU engines do for any prefix in blocks (vLLM's automatic prefix
caching, SGLang's radix tree), this does for the one prefix most chat traffic shares.

To drop it: in llm_server.py, leave out the Engine's `prefill=` argument (the engine then runs
every prompt whole) and the `system_prompt_length` call.
"""

import copy
from collections import OrderedDict

import torch
from transformers import DynamicCache


# --8<-- [start:prefix]
def system_prompt_length(tokenizer, messages: list[dict], prompt_ids: list[int]) -> int:
    """How many leading prompt tokens are the system prompt, the part other requests share: 0
    without a system message, or when its tokens are not a prefix of the whole prompt's (some
    chat templates render it differently once more messages follow)."""
    if messages[0]["role"] != "system" or len(messages) < 2:
        return 0
    system = tokenizer.apply_chat_template(messages[:1], tokenize=True, return_dict=True)
    ids = system["input_ids"]
    return len(ids) if prompt_ids[: len(ids)] == ids else 0


class PrefixCache:
    """The KV caches of recent shared prefixes, least recently used dropped first; its `prefill`
    is the engine's admission hook. `hits` and `saved` are the Prometheus counters it adds to."""

    def __init__(self, size: int, hits, saved):
        self.size, self.entries = size, OrderedDict()
        self.hits, self.saved = hits, saved

    def prefill(self, model, seq) -> tuple[DynamicCache, torch.Tensor]:
        """The sequence's KV cache and next-token logits, prefilling only what follows a cached
        prefix; a shared prefix seen for the first time is cached for the next request."""
        prefix = seq.prompt_ids[: seq.shared_prefix]
        cached = self.get(prefix)
        cache = cached or DynamicCache(config=model.config)
        start = len(prefix) if cached else 0
        ids = torch.tensor([seq.prompt_ids[start:]])
        logits = model(input_ids=ids, cache=cache, use_cache=True, logits_to_keep=1).logits
        if cached:
            self.hits.inc()
            self.saved.inc(start)
        elif prefix:
            self.put(prefix, cache)
        return cache, logits[0, -1]

    def get(self, prefix: list[int]) -> DynamicCache | None:
        """A private copy of the cached prefix's KV (the copy grows; the cached one must not)."""
        if not prefix or (found := self.entries.get(tuple(prefix))) is None:
            return None
        self.entries.move_to_end(tuple(prefix))
        return copy.deepcopy(found)

    def put(self, prefix: list[int], cache: DynamicCache) -> None:
        if self.size < 1:
            return
        snapshot = copy.deepcopy(cache)
        for layer in snapshot.layers:  # keep only the prefix's positions
            layer.keys = layer.keys[:, :, : len(prefix)].clone()
            layer.values = layer.values[:, :, : len(prefix)].clone()
        self.entries[tuple(prefix)] = snapshot
        while len(self.entries) > self.size:
            self.entries.popitem(last=False)


# --8<-- [end:prefix]
