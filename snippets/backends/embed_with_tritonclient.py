"""Embeddings over the Open Inference Protocol (KServe v2) with NVIDIA's `tritonclient`.

The same client talks to Triton Inference Server, KServe and this guide's embedding server:
strings go in as a BYTES tensor, embeddings come back as an FP32 tensor.

    python snippets/backends/embed_with_tritonclient.py --url 127.0.0.1:8000
"""

import argparse

import numpy as np
import tritonclient.http as triton

parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
parser.add_argument("--url", default="127.0.0.1:8000", help="host:port, no scheme")
args = parser.parse_args()

client = triton.InferenceServerClient(url=args.url)
assert client.is_model_ready("all-MiniLM-L6-v2"), "model not ready"
print("inputs:", client.get_model_metadata("all-MiniLM-L6-v2")["inputs"])

texts = np.array(["Triton speaks the Open Inference Protocol", "so does KServe"], dtype=object)
text_input = triton.InferInput("text", [len(texts)], "BYTES")
text_input.set_data_from_numpy(texts)  # sent in the binary tensor extension by default
result = client.infer("all-MiniLM-L6-v2", [text_input])
embeddings = result.as_numpy("embedding")
print(f"embedding tensor {embeddings.shape}, dtype {embeddings.dtype}")
print(f"cosine similarity: {float(embeddings[0] @ embeddings[1]):.3f}")
