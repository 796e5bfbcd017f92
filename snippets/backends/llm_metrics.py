"""The LLM server's Prometheus metrics, served at GET /metrics: requests by route and status,
prompt and output tokens, time to first token, time per output token, running and waiting
sequences, and prefix-cache hits. The engine and the routes of llm_server.py update them.

For dashboards and alerts, see the visualisation page; vLLM's own names for the same measures
start with `vllm:` (`vllm:time_to_first_token_seconds`, `vllm:num_requests_waiting`, ...).
"""

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

registry = CollectorRegistry()
REQUESTS = Counter(
    "llm_requests", "HTTP requests by route and status", ["route", "status"], registry=registry
)
PROMPT_TOKENS = Counter("llm_prompt_tokens", "Prompt tokens processed", registry=registry)
OUTPUT_TOKENS = Counter("llm_output_tokens", "Tokens generated", registry=registry)
TTFT = Histogram(
    "llm_time_to_first_token_seconds",
    "Request arrival to first token",
    buckets=(0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30),
    registry=registry,
)
TPOT = Histogram(
    "llm_time_per_output_token_seconds",
    "Mean time between output tokens of a request",
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1),
    registry=registry,
)
RUNNING = Gauge("llm_running_sequences", "Sequences in the decode batch", registry=registry)
WAITING = Gauge("llm_waiting_sequences", "Sequences waiting for a place", registry=registry)
PREFIX_HITS = Counter(
    "llm_prefix_cache_hits", "Prefills that reused a cached shared prefix", registry=registry
)
PREFIX_TOKENS = Counter(
    "llm_prefix_cache_tokens",
    "Prompt tokens whose prefill a cached prefix saved",
    registry=registry,
)
