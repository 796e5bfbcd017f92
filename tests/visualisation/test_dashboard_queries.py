"""visualisation/dashboard_queries.py: rates and percentiles from two scrapes agree with
Prometheus' rules, and feedback per model version is counted right on a request log the test
writes with the servers' schema."""

import pytest
from conversation_fixture import add_request, request_log
from helpers import load_snippet
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

queries = load_snippet("visualisation/dashboard_queries.py")
DAY = 86400
CHAT = "/v1/chat/completions"


def llm_registry():
    """The LLM server's metric names and buckets, in a registry of the test's own."""
    registry = CollectorRegistry()
    return registry, {
        "requests": Counter("llm_requests", "", ["route", "status"], registry=registry),
        "ttft": Histogram(
            "llm_time_to_first_token_seconds",
            "",
            registry=registry,
            buckets=(0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30),
        ),
        "waiting": Gauge("llm_waiting_sequences", "", registry=registry),
    }


def snapshot(registry, at: float):
    return queries.Scrape(at, queries.parse(generate_latest(registry).decode()))


def test_rates_and_percentiles_between_two_scrapes():
    registry, m = llm_registry()
    m["requests"].labels(CHAT, "200").inc(7)
    m["ttft"].observe(5.0)  # before the window: must not count
    old = snapshot(registry, at=100.0)
    m["requests"].labels(CHAT, "200").inc(18)
    m["requests"].labels(CHAT, "503").inc(2)
    m["requests"].labels(CHAT, "400").inc(1)
    m["requests"].labels("/metrics", "200").inc(2)  # scrapes are not traffic
    for _ in range(90):
        m["ttft"].observe(0.07)  # the (0.05, 0.1] bucket
    for _ in range(10):
        m["ttft"].observe(0.3)  # the (0.25, 0.5] bucket
    m["waiting"].set(3)
    new = snapshot(registry, at=110.0)

    point = queries.llm_point(old, new)
    assert point["requests/s"] == pytest.approx(2.1)
    assert point["errors/s (5xx)"] == pytest.approx(0.2)
    assert point["rejected/s (4xx)"] == pytest.approx(0.1)
    # rank 50 of 100 lies in (0.05, 0.1], which holds ranks 1..90: 0.05 + 0.05 * 50/90
    assert point["TTFT p50 (s)"] == pytest.approx(0.05 + 0.05 * 50 / 90)
    # rank 95 lies in (0.25, 0.5], which holds ranks 91..100: 0.25 + 0.25 * 5/10
    assert point["TTFT p95 (s)"] == pytest.approx(0.375)
    assert point["TPOT p95 (s)"] is None  # nothing observed: no number, not zero
    assert point["waiting sequences"] == 3


def test_a_restarted_server_counts_from_zero():
    registry, m = llm_registry()
    m["requests"].labels(CHAT, "200").inc(1000)
    old = snapshot(registry, at=0.0)
    registry, m = llm_registry()  # the process restarted: its counters start again
    m["requests"].labels(CHAT, "200").inc(30)
    m["ttft"].observe(0.07)
    new = snapshot(registry, at=10.0)
    assert queries.rate(old, new, "llm_requests_total") == pytest.approx(3.0)
    p50 = queries.quantile(0.5, old, new, "llm_time_to_first_token_seconds")
    assert p50 == pytest.approx(0.075)


def test_window_points_look_back_at_most_the_window():
    registry, m = llm_registry()
    history = []
    for second in range(0, 50, 5):  # a scrape every 5 s, one request per second
        history.append(snapshot(registry, at=float(second)))
        m["requests"].labels(CHAT, "200").inc(5)
    points = queries.window_points(history, queries.llm_point, window_s=20)
    assert [p["time"] for p in points] == [float(s) for s in range(5, 50, 5)]
    assert all(p["requests/s"] == pytest.approx(1.0) for p in points)


def test_feedback_by_version(tmp_path):
    path = tmp_path / "requests.db"
    conn = request_log().connect(path)
    # version, day, ratings (None: not rated)
    plan = [("v1", 0, [1, -1, None]), ("v1", 1, [1, 1, -1, -1]), ("v2", 1, [1, 1, 1, None, None])]
    with conn:
        for version, day, ratings in plan:
            for i, rating in enumerate(ratings):
                add_request(
                    conn,
                    f"{version}-{day}-{i}",
                    day * DAY + 3600 + i,
                    [],
                    "answer",
                    version,
                    rating,
                )
    conn.close()
    rows = queries.feedback_by_version(str(path), bucket_s=DAY)
    columns = ("model_version", "period", "requests", "rated", "thumbs_up", "ratio")
    assert [tuple(row[c] for c in columns) for row in rows] == [
        ("v1", 0, 3, 2, 1, 0.5),
        ("v1", DAY, 4, 4, 2, 0.5),
        ("v2", DAY, 5, 3, 3, 1.0),
    ]
    since_day_one = queries.feedback_by_version(str(path), bucket_s=DAY, since=DAY)
    assert [row["model_version"] for row in since_day_one] == ["v1", "v2"]


def test_the_vllm_view_reads_the_suites_running_vllm(vllm_chat):
    """LLM_ENGINE=vllm: the same charts from vLLM's own names, scraped before and after real
    traffic (two answers of 8 tokens and one refused request)."""
    import requests
    from helpers import wait_until

    chat = f"{vllm_chat.url}/v1/chat/completions"
    hi = {"model": "SmolLM2-135M-Instruct", "messages": [{"role": "user", "content": "Hi"}]}
    old = queries.scrape(vllm_chat.url)
    for _ in range(2):
        requests.post(chat, json={**hi, "max_tokens": 8, "ignore_eos": True}, timeout=60)
    assert requests.post(chat, json={**hi, "max_tokens": -1}, timeout=60).status_code == 400

    def finished_both():
        new = queries.scrape(vllm_chat.url)
        return new if queries.increase(old, new, "vllm:request_success_total") >= 2 else None

    new = wait_until(finished_both, timeout=10)  # vLLM records a request just after its answer
    point = queries.vllm_point(old, new)
    assert point["requests/s"] > 0 and point["rejected/s (4xx)"] > 0
    assert point["errors/s (5xx)"] == 0
    assert point["TTFT p95 (s)"] > 0 and point["TPOT p95 (s)"] > 0
    assert point["output tokens/s"] > 0
    assert point["running sequences"] == 0 and point["waiting sequences"] == 0
