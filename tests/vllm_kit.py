"""vLLM in the suite: started with the catalogue's command, and its own argument parser run over
every vLLM flag the pages quote. Nothing here imports vllm: it lives in `.venv-vllm`."""

import contextlib
import json
import re
import shlex
import subprocess
from pathlib import Path

from helpers import free_port, serve_command
from vllm_cpu import (
    API_SERVER,
    LORA_FLAGS,
    TOOL_FLAGS,
    VLLM_PYTHON,
    catalogue_command,
    command_argv,
    vllm_env,
)

# What the suite adds to the catalogue's command: eager mode starts in about half a minute instead
# of two (no torch.compile); float32 makes greedy output comparable token for token with this
# guide's server and transformers; four sequences at most, so a burst shows vLLM's queue; and a
# drain on SIGTERM, which the last test of the session sends (vLLM 0.32's default, 0, aborts).
MAX_NUM_SEQS = 4
SHUTDOWN_TIMEOUT = 30
SUITE_FLAGS = [
    "--enforce-eager",
    "--dtype",
    "float32",
    "--max-num-seqs",
    str(MAX_NUM_SEQS),
    "--shutdown-timeout",
    str(SHUTDOWN_TIMEOUT),
]


# The chat server's features (features.md): tool calling and the intent LoRA adapter.
CHAT_FLAGS = [*TOOL_FLAGS, *LORA_FLAGS]
RUNTIME_LORA = {"VLLM_ALLOW_RUNTIME_LORA_UPDATING": "True"}


@contextlib.contextmanager
def start_vllm(
    field: str,
    folder: Path,
    *flags: str,
    kv_cache_gib: int = 1,
    env: dict | None = None,
    startup_timeout: float = 240,
):
    """Start vLLM with the catalogue's command `field` (`start`, `start_embeddings`) serving
    `folder` on a free loopback port, `flags` and `env` added; yield its handle."""
    port = free_port()
    argv = [*command_argv(catalogue_command(field), folder, *flags), "--port", str(port)]
    environment = {**vllm_env(kv_cache_gib), **(env or {})}
    with serve_command(argv, port, env=environment, startup_timeout=startup_timeout) as handle:
        yield handle


PARSE = """
import contextlib, io, json, sys
from vllm.entrypoints.launchers.cli_args import make_arg_parser, validate_parsed_serve_args
from vllm.utils.argparse_utils import FlexibleArgumentParser

errors = []
for argv in json.load(sys.stdin):
    parser = make_arg_parser(FlexibleArgumentParser(prog="vllm serve", exit_on_error=False))
    said = io.StringIO()
    try:
        with contextlib.redirect_stderr(said):
            args = parser.parse_args(argv)
            validate_parsed_serve_args(args)
        errors.append(None)
    except (Exception, SystemExit) as error:
        lines = said.getvalue().strip().splitlines() or [f"{type(error).__name__}: {error}"]
        errors.append(lines[-1])
print(json.dumps(errors))
"""


def parse_vllm_args(commands: list[str]) -> dict[str, str | None]:
    """Parse each `vllm serve ...` or `python -m vllm.entrypoints.openai.api_server ...` command
    with the installed vLLM's own parser and the checks `vllm serve` runs before loading a model;
    map command -> its error line, or None. Nothing is loaded, so a model name need not exist."""
    argvs = [serve_arguments(c) for c in commands]
    result = subprocess.run(
        [str(VLLM_PYTHON), "-c", PARSE],
        input=json.dumps(argvs),
        capture_output=True,
        text=True,
        timeout=180,
        env=vllm_env(1),
    )
    assert result.returncode == 0, result.stderr[-3000:]
    return dict(zip(commands, json.loads(result.stdout.splitlines()[-1]), strict=True))


def serve_arguments(command: str) -> list[str]:
    """The arguments after the launcher: `vllm serve M --x` -> [M, --x]; the module form likewise."""
    words = shlex.split(command)
    for launcher in (["vllm", "serve"], API_SERVER):
        if words[: len(launcher)] == launcher:
            return words[len(launcher) :]
    raise ValueError(f"not a vLLM start command: {command}")


VLLM_COMMAND = re.compile(
    r"(?:^|[\s/])((?:vllm serve|python -m vllm\.entrypoints\.openai\.api_server)\b.*)"
)
FENCED = re.compile(r"^```[^\n]*\n(.*?)^```", re.MULTILINE | re.DOTALL)


def commands_in(page: str) -> list[str]:
    """Every vLLM start command in a page's code blocks, continuation lines joined and whatever
    precedes the launcher (environment settings, a venv's bin/) left out."""
    code = "\n".join(FENCED.findall(page))
    joined = re.sub(r"\\\n\s*", " ", code)
    return [m.group(1).strip() for line in joined.splitlines() if (m := VLLM_COMMAND.search(line))]
