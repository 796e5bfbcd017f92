"""The engine readers deploy, run beside this guide's servers: the client snippets the pages show
run unchanged against vLLM (its URL the only difference), vLLM starts with the catalogue's
command, and every vLLM command a page or the catalogue quotes passes vLLM's own parser."""

import pytest
import requests
from helpers import REPO, run_snippet
from vllm_cpu import catalogue_command
from vllm_kit import commands_in, parse_vllm_args, serve_arguments

pytestmark = pytest.mark.slow

CHAT_SNIPPETS = [
    ("backends/chat_with_openai.py", "streamed: The capital of France is Paris. (8 tokens)"),
    ("backends/chat_with_requests_sse.py", "finish_reason=stop"),
    ("backends/structured_output_with_openai.py", "valid: ['city', 'country', 'is_capital'"),
]
EMBEDDING_SNIPPETS = [
    ("backends/embed_with_openai.py", "2 embeddings of 384 floats from all-MiniLM-L6-v2"),
    ("backends/embed_with_requests.py", "2 embeddings of 384 floats"),
]


@pytest.mark.parametrize(("snippet", "expected"), CHAT_SNIPPETS)
def test_a_chat_snippet_prints_the_same_against_both_engines(
    snippet, expected, llm_server, vllm_chat
):
    """Greedy decoding in float32 on both: the same snippet prints the same answer."""
    ours = run_snippet(snippet, "--url", llm_server.url)
    theirs = run_snippet(snippet, "--url", vllm_chat.url)
    assert expected in ours
    assert theirs == ours


@pytest.mark.parametrize(("snippet", "expected"), EMBEDDING_SNIPPETS)
def test_an_embedding_snippet_prints_the_same_against_both_engines(
    snippet, expected, embedding_server, vllm_embeddings
):
    """Both mean-pool and normalise MiniLM: the same vector sizes and cosine similarity."""
    ours = run_snippet(snippet, "--url", embedding_server.url)
    theirs = run_snippet(snippet, "--url", vllm_embeddings.url)
    assert expected in ours
    assert theirs == ours


def test_vllm_serves_the_catalogue_commands_model_names(vllm_chat, vllm_embeddings):
    """The fixtures started the catalogue's own commands: the names they serve are the ones the
    snippets ask for."""
    for handle, name in [
        (vllm_chat, "SmolLM2-135M-Instruct"),
        (vllm_embeddings, "all-MiniLM-L6-v2"),
    ]:
        models = requests.get(handle.url + "/v1/models", timeout=10).json()["data"]
        base = [m["id"] for m in models if m["id"] != "intent"]  # the chat server's adapter
        assert base == [name]
        assert f"--served-model-name {name}" in " ".join(handle.proc.args)


def quoted_commands() -> list[str]:
    """Every vLLM start command in the pages and in the catalogue."""
    pages = sorted((REPO / "docs").rglob("*.md"))
    found = [c for page in pages for c in commands_in(page.read_text())]
    return [*found, catalogue_command("start"), catalogue_command("start_embeddings")]


# Commands that must fail vLLM's parser, and why: a renamed flag, a flag without its companion,
# and what structured-output.md warns of, `disable_any_whitespace` without naming the xgrammar or
# guidance backend. (argparse accepts an unambiguous prefix of a flag, so a flag cut short,
# `--max-num-seq`, still passes.)
BROKEN_COMMANDS = {
    "vllm serve m --max-num-sequences 8": "unrecognized arguments: --max-num-sequences 8",
    "vllm serve m --enable-auto-tool-choice": "requires --tool-call-parser",
    "vllm serve m --structured-outputs-config.disable_any_whitespace true": (
        "only supported for xgrammar and guidance backends"
    ),
}
MODULE_FORM = "python -m vllm.entrypoints.openai.api_server --model m --max-num-seqs 8"


@pytest.fixture(scope="module")
def parsed() -> dict[str, str | None]:
    """vLLM's parser over the quoted commands and this module's own, in one start of vLLM's
    Python (importing vLLM is most of its 7 s)."""
    return parse_vllm_args([*quoted_commands(), *BROKEN_COMMANDS, MODULE_FORM])


def test_every_vllm_command_quoted_passes_vllms_own_parser(parsed):
    """A flag renamed or removed in the vLLM the suite installs fails here, not for a reader."""
    commands = quoted_commands()
    assert len(commands) >= 5
    assert {c: parsed[c] for c in commands if parsed[c]} == {}


def test_the_parser_check_catches_a_renamed_flag_and_a_missing_companion(parsed):
    for command, error in BROKEN_COMMANDS.items():
        assert error in parsed[command], (command, parsed[command])
    assert parsed[MODULE_FORM] is None
    assert serve_arguments(MODULE_FORM) == ["--model", "m", "--max-num-seqs", "8"]


def test_vllm_cpu_refuses_a_forced_tool_call_under_the_catalogues_grammar_backend(vllm_chat):
    """What features.md reports: vLLM 0.32 (with the parser its documentation names; without
    one even a named function is refused) builds a forced call as a structural tag with
    triggers, which its guidance backend, the one the catalogue names for compact JSON, does not
    accept: a 400, not a call. (With xgrammar the
    same request answered finish_reason "stop" and arguments `"Paris"`, off the schema, in a
    manual run on this machine.)"""
    weather = {
        "type": "function",
        "function": {
            "name": "get_weather",
            "parameters": {
                "type": "object",
                "properties": {"city": {"type": "string"}},
                "required": ["city"],
            },
        },
    }
    body = {
        "model": "SmolLM2-135M-Instruct",
        "messages": [{"role": "user", "content": "Weather in Paris?"}],
        "tools": [weather],
        "max_tokens": 32,
    }
    for choice in ({"type": "function", "function": {"name": "get_weather"}}, "required"):
        reply = requests.post(
            f"{vllm_chat.url}/v1/chat/completions", json={**body, "tool_choice": choice}, timeout=60
        )
        assert reply.status_code == 400, reply.text
        assert "Invalid grammar specification: 'triggers'" in reply.json()["error"]["message"]
