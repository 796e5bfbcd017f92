"""visualisation/dashboard.py without a browser (Streamlit's AppTest): with no server running it
says so instead of failing, and it draws feedback and a conversation from a request log.
tests/browser/test_dashboard.py runs it in Chromium against the live LLM server."""

import json
import time

import requests
from conversation_fixture import Q1, write_log
from helpers import SNIPPETS, free_port
from streamlit.testing.v1 import AppTest


def run_dashboard(monkeypatch, log_path) -> AppTest:
    down = f"http://127.0.0.1:{free_port()}"
    monkeypatch.setenv("LLM_SERVER_URL", down)
    monkeypatch.setenv("EMBEDDING_SERVER_URL", down)
    monkeypatch.setenv("REQUEST_LOG", str(log_path))
    monkeypatch.syspath_prepend(str(SNIPPETS / "visualisation"))  # as `streamlit run` does
    return AppTest.from_file(str(SNIPPETS / "visualisation/dashboard.py"), default_timeout=30).run()


def test_no_servers_and_no_log_are_messages(monkeypatch, tmp_path):
    app = run_dashboard(monkeypatch, tmp_path / "missing.db")
    assert not app.exception
    warned = [w.value.split(" at ")[0] for w in app.warning]
    assert warned == ["The LLM server", "The embedding server"]
    assert app.info[0].value.startswith("No request log at")
    assert not (tmp_path / "missing.db").exists()  # reading never creates a log


def test_feedback_and_conversations_from_a_log(monkeypatch, tmp_path):
    write_log(tmp_path / "requests.db")
    app = run_dashboard(monkeypatch, tmp_path / "requests.db")
    assert not app.exception and not app.error
    assert len(app.get("vega_lite_chart")) == 2  # feedback ratio and ratings per version
    conversations = next(s for s in app.selectbox if s.label == "Conversation")
    assert len(conversations.options) == 2
    assert Q1 in conversations.format_func(conversations.value)  # the most branched one first
    dot = app.get("graphviz_chart")[0].proto.spec
    assert dot.count("->") == 6 and dot.count("style=dashed") == 4


def test_no_traffic_yet_then_charts_in_clock_time(monkeypatch, tmp_path, llm_server):
    """A first look with no traffic says so instead of drawing flat zeros and empty percentiles;
    once requests arrive, every chart's time axis reads as clock time (hours:minutes:seconds)."""
    monkeypatch.setenv("LLM_SERVER_URL", llm_server.url)
    monkeypatch.setenv("EMBEDDING_SERVER_URL", f"http://127.0.0.1:{free_port()}")
    monkeypatch.setenv("REQUEST_LOG", str(tmp_path / "none.db"))
    monkeypatch.syspath_prepend(str(SNIPPETS / "visualisation"))
    app = AppTest.from_file(str(SNIPPETS / "visualisation/dashboard.py"), default_timeout=30)
    app.run()
    time.sleep(1.1)
    app.run()  # a second scrape: the first rates, over a window with no requests
    assert any(info.value.startswith("LLM server: no traffic yet") for info in app.info)
    assert not app.get("vega_lite_chart")
    body = {"model": "SmolLM2-135M-Instruct", "max_tokens": 3}
    body["messages"] = [{"role": "user", "content": "Hi"}]
    requests.post(llm_server.url + "/v1/chat/completions", json=body, timeout=60).raise_for_status()
    app.run()
    charts = [json.loads(chart.proto.spec) for chart in app.get("vega_lite_chart")]
    assert len(charts) == 5 and not app.exception
    for spec in charts:
        assert spec["encoding"]["x"]["axis"]["format"] == "%H:%M:%S"
        assert spec["encoding"]["y"]["axis"]["format"] == "~g"  # 0 and 0.05, never 0.000000
