"""visualisation/dashboard.py in Chromium: live charts from the real LLM server's /metrics while
requests arrive, feedback per model version and the conversation graph from a request log,
and a plain message for the embedding server that is not running."""

import random
import time

import requests
from browser_kit import SCREENSHOTS, screenshot, streamlit_app
from helpers import free_port
from visualisation.conversation_fixture import add_request, request_log, write_log

DAY = 86400


def two_weeks_of_feedback(path) -> None:
    """Fourteen days of rated chat requests: v1 for eight days, then v2, which is liked more;
    plus the branched conversations of the fixture, an hour ago."""
    write_log(path, model_version="v2")
    rng, now = random.Random(0), time.time()
    conn = request_log().connect(path)
    with conn:
        for day in range(14):
            version, liked = ("v1", 0.62) if day < 8 else ("v2", 0.81)
            for i in range(rng.randint(25, 40)):
                rating = (1 if rng.random() < liked else -1) if rng.random() < 0.4 else None
                question = [{"role": "user", "content": f"Question {i} of day {day}"}]
                add_request(
                    conn,
                    f"r-{day}-{i}",
                    now - (14 - day) * DAY + i * 900,
                    question,
                    "An answer.",
                    version,
                    rating,
                )
    conn.close()


def chat(url: str, n: int) -> None:
    model = requests.get(f"{url}/v1/models", timeout=10).json()["data"][0]["id"]
    for i in range(n):
        question = [{"role": "user", "content": f"Count to {i + 3}."}]
        answer = requests.post(
            f"{url}/v1/chat/completions",
            timeout=60,
            json={"model": model, "max_tokens": 5, "messages": question},
        )
        answer.raise_for_status()


def test_live_charts_feedback_and_conversations(page, llm_server, tmp_path):
    two_weeks_of_feedback(tmp_path / "requests.db")
    env = {
        "LLM_SERVER_URL": llm_server.url,
        "EMBEDDING_SERVER_URL": f"http://127.0.0.1:{free_port()}",
        "REQUEST_LOG": str(tmp_path / "requests.db"),
    }
    with streamlit_app("visualisation/dashboard.py", env) as app:
        page.goto(app.url, wait_until="load")
        page.get_by_text("collecting").wait_for(timeout=30_000)  # the first scrape is in
        page.get_by_text("LLM server: no traffic yet").wait_for(timeout=30_000)
        assert page.get_by_test_id("stVegaLiteChart").count() == 2  # the feedback charts only
        screenshot(
            page,
            "visualisation/img/dashboard-no-traffic.png",
            "tests/browser/test_dashboard_in_browser.py",
            height=900,
        )
        chat(llm_server.url, 2)
        requests_per_s = page.get_by_test_id("stMetric").first
        page.wait_for_function(
            "el => parseFloat(el.querySelector('[data-testid=stMetricValue]').innerText) > 0",
            arg=requests_per_s.element_handle(),
            timeout=30_000,
        )
        if SCREENSHOTS:  # half a minute more traffic, so each chart has a line to show
            chat(llm_server.url, 20)
            page.wait_for_timeout(6000)
        charts = page.get_by_test_id("stVegaLiteChart")
        # five LLM charts, two feedback charts; the page reruns every few seconds, and a count
        # taken while a rerun redraws it can be short, so wait for the whole page
        page.wait_for_function(
            "() => document.querySelectorAll('[data-testid=stVegaLiteChart]').length === 7",
            timeout=30_000,
        )
        assert charts.count() == 5 + 2
        for i in range(charts.count()):
            box = charts.nth(i).locator("canvas, svg").first.bounding_box()
            assert box["width"] > 200 and box["height"] > 100
        assert "embedding server" in page.get_by_test_id("stAlert").first.inner_text()
        graph = page.get_by_test_id("stGraphVizChart")
        graph.locator("svg g.node").first.wait_for()
        assert graph.locator("svg g.node").count() == 7  # the branched conversation
        assert page.get_by_test_id("stException").count() == 0
        screenshot(
            page,
            "visualisation/img/dashboard.png",
            "tests/browser/test_dashboard_in_browser.py",
            height=2000,
        )
