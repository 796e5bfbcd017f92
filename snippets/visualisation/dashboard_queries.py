"""The numbers behind the operations dashboard, apart from its drawing, so they can be tested.

Two sources, one each: the servers' /metrics (Prometheus text, scraped every few seconds) and
the request log (snippets/backends/request_log.py) for feedback. Rates and percentiles are
computed the way Prometheus computes rate() and histogram_quantile(): from the change of each
counter and histogram bucket over a window.
"""

import contextlib
import math
import sqlite3
import time
from dataclasses import dataclass

import requests
from prometheus_client.parser import text_string_to_metric_families

Samples = dict[tuple[str, tuple], float]  # (sample name, sorted label pairs) -> value
PROBES = ("/health", "/metrics", "/v1/models")  # monitoring and discovery: not traffic


@dataclass
class Scrape:
    at: float  # Unix seconds
    samples: Samples


def scrape(base_url: str, timeout: float = 2) -> Scrape:
    """GET <base_url>/metrics and parse it; requests.RequestException if the server is down."""
    response = requests.get(f"{base_url}/metrics", timeout=timeout)
    response.raise_for_status()
    return Scrape(time.time(), parse(response.text))


def parse(text: str) -> Samples:
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def total(samples: Samples, name: str, **match: str) -> float:
    """Sum of the series called `name` whose labels start with the given values (status="5"
    matches 500 and 503), leaving out the requests to PROBES routes (this dashboard's own
    scrapes among them)."""
    return sum(
        value
        for (sample, labels), value in samples.items()
        if sample == name
        and dict(labels).get("route") not in PROBES
        and all(dict(labels).get(k, "").startswith(v) for k, v in match.items())
    )


def increase(old: Scrape, new: Scrape, name: str, **match: str) -> float:
    """How much a counter grew; a restarted server (counter went down) counts from zero."""
    now = total(new.samples, name, **match)
    before = total(old.samples, name, **match)
    return now - before if now >= before else now


def rate(old: Scrape, new: Scrape, name: str, **match: str) -> float:
    """Per-second increase of a counter between two scrapes, like Prometheus' rate()."""
    return increase(old, new, name, **match) / max(new.at - old.at, 1e-9)


def buckets(samples: Samples, histogram: str) -> dict[float, float]:
    """Cumulative bucket counts by upper bound, summed over any other labels."""
    counts: dict[float, float] = {}
    for (name, labels), value in samples.items():
        if name == f"{histogram}_bucket":
            bound = float(dict(labels)["le"])
            counts[bound] = counts.get(bound, 0) + value
    return counts


def quantile(q: float, old: Scrape, new: Scrape, histogram: str) -> float | None:
    """The q-quantile of what a histogram observed between two scrapes, interpolated linearly
    inside its bucket like histogram_quantile(); None when nothing was observed."""
    before, now = buckets(old.samples, histogram), buckets(new.samples, histogram)
    if any(now[b] < before.get(b, 0) for b in now):  # the server restarted: count from zero
        before = {}
    bounds = sorted(now)
    cumulative = [now[b] - before.get(b, 0) for b in bounds]
    if not cumulative or cumulative[-1] <= 0:
        return None
    rank, lower, below = q * cumulative[-1], 0.0, 0.0
    for bound, count in zip(bounds, cumulative):
        if count >= rank:
            if math.isinf(bound):  # above the last finite bucket: its bound is all we know
                return lower
            return lower + (bound - lower) * (rank - below) / max(count - below, 1e-12)
        lower, below = bound, count
    return lower


def mean(old: Scrape, new: Scrape, histogram: str) -> float | None:
    """Mean observation between two scrapes (sum over count), None when there was none."""
    count = increase(old, new, f"{histogram}_count")
    return increase(old, new, f"{histogram}_sum") / count if count else None


def llm_point(old: Scrape, new: Scrape) -> dict:
    """One point of each LLM server chart, over the window between two scrapes."""
    return {
        "requests/s": rate(old, new, "llm_requests_total"),
        "errors/s (5xx)": rate(old, new, "llm_requests_total", status="5"),
        "rejected/s (4xx)": rate(old, new, "llm_requests_total", status="4"),
        "TTFT p50 (s)": quantile(0.5, old, new, "llm_time_to_first_token_seconds"),
        "TTFT p95 (s)": quantile(0.95, old, new, "llm_time_to_first_token_seconds"),
        "TPOT p50 (s)": quantile(0.5, old, new, "llm_time_per_output_token_seconds"),
        "TPOT p95 (s)": quantile(0.95, old, new, "llm_time_per_output_token_seconds"),
        "output tokens/s": rate(old, new, "llm_output_tokens_total"),
        "running sequences": total(new.samples, "llm_running_sequences"),
        "waiting sequences": total(new.samples, "llm_waiting_sequences"),
    }


def vllm_point(old: Scrape, new: Scrape) -> dict:
    """The same LLM charts from the names vLLM exports, so the dashboard watches vLLM too.
    Requests are those vLLM finished (any reason); HTTP 4xx and 5xx come from its HTTP metrics."""
    return {
        "requests/s": rate(old, new, "vllm:request_success_total"),
        "errors/s (5xx)": rate(old, new, "http_requests_total", status="5"),
        "rejected/s (4xx)": rate(old, new, "http_requests_total", status="4"),
        "TTFT p50 (s)": quantile(0.5, old, new, "vllm:time_to_first_token_seconds"),
        "TTFT p95 (s)": quantile(0.95, old, new, "vllm:time_to_first_token_seconds"),
        "TPOT p50 (s)": quantile(0.5, old, new, "vllm:request_time_per_output_token_seconds"),
        "TPOT p95 (s)": quantile(0.95, old, new, "vllm:request_time_per_output_token_seconds"),
        "output tokens/s": rate(old, new, "vllm:generation_tokens_total"),
        "running sequences": total(new.samples, "vllm:num_requests_running"),
        "waiting sequences": total(new.samples, "vllm:num_requests_waiting"),
    }


def embedding_point(old: Scrape, new: Scrape) -> dict:
    """One point of each embedding server chart, over the window between two scrapes."""
    return {
        "requests/s": rate(old, new, "embedding_requests_total"),
        "errors/s (5xx)": rate(old, new, "embedding_requests_total", status="5"),
        "rejected/s (4xx)": rate(old, new, "embedding_requests_total", status="4"),
        "latency p50 (s)": quantile(0.5, old, new, "embedding_request_latency_seconds"),
        "latency p95 (s)": quantile(0.95, old, new, "embedding_request_latency_seconds"),
        "mean batch size": mean(old, new, "embedding_batch_size"),
        "queue depth": total(new.samples, "embedding_queue_depth"),
    }


def window_points(history: list[Scrape], point, window_s: float) -> list[dict]:
    """For each scrape, the point over the `window_s` seconds before it (or since the first
    scrape, while the history is younger), stamped with the scrape's time."""
    points = []
    for i, new in enumerate(history[1:], start=1):
        old = next(s for s in history[:i] if new.at - s.at <= window_s or s is history[i - 1])
        points.append({"time": new.at, **point(old, new)})
    return points


FEEDBACK_BY_VERSION = """
SELECT r.model_version,
       CAST(f.created_at / :bucket AS INTEGER) * :bucket AS period,
       COUNT(*) AS rated,
       SUM(f.rating = 1) AS thumbs_up
FROM feedback f JOIN requests r ON r.id = f.request_id
WHERE f.created_at >= :since
GROUP BY r.model_version, period
ORDER BY period, r.model_version
"""

REQUESTS_BY_VERSION = """
SELECT model_version,
       CAST(created_at / :bucket AS INTEGER) * :bucket AS period,
       COUNT(*) AS requests
FROM requests
WHERE created_at >= :since
GROUP BY model_version, period
"""


def feedback_by_version(path: str, bucket_s: float = 86400, since: float = 0) -> list[dict]:
    """Per model version and period (a day by default): requests, ratings, thumbs up and the
    feedback ratio (thumbs up / rated). Opens its own connection: in WAL mode a reader never
    blocks the server's writer."""
    params = {"bucket": bucket_s, "since": since}
    with contextlib.closing(sqlite3.connect(path)) as conn:
        volume = {(v, p): n for v, p, n in conn.execute(REQUESTS_BY_VERSION, params)}
        rows = conn.execute(FEEDBACK_BY_VERSION, params).fetchall()
    return [
        {
            "model_version": version,
            "period": period,
            "rated": rated,
            "thumbs_up": up,
            "requests": volume.get((version, period), 0),
            "ratio": up / rated,
        }
        for version, period, rated, up in rows
    ]
