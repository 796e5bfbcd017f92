"""visualisation/dashboard.py without a browser (Streamlit's AppTest): with no server running it
says so instead of failing, and it draws feedback and a conversation from a request log.
tests/browser/test_dashboard.py runs it in Chromium against the live LLM server."""

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
