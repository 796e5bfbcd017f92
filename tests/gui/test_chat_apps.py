"""gui/chat_streamlit.py and gui/chat_gradio.py without a browser: what each shows when the
server is down. (tests/browser/ runs both in Chromium against the real LLM server.)"""

import pytest
from helpers import SNIPPETS, free_port, load_snippet
from streamlit.testing.v1 import AppTest


@pytest.fixture
def down_server(monkeypatch) -> str:
    """OPENAI_BASE_URL pointing at a loopback port nothing listens on."""
    url = f"http://127.0.0.1:{free_port()}/v1"
    monkeypatch.setenv("OPENAI_BASE_URL", url)
    return url


def test_streamlit_chat_says_the_server_is_down(down_server):
    app = AppTest.from_file(str(SNIPPETS / "gui/chat_streamlit.py"), default_timeout=30).run()
    assert not app.exception and not app.error
    app.chat_input[0].set_value("Hello?").run()
    expected = f"Cannot reach the model server at {down_server}. Is it running?"
    assert [e.value for e in app.error] == [expected]
    assert not app.exception  # a message, not a traceback
    assert not app.session_state["messages"]  # the failed turn is not kept in the conversation


def test_gradio_chat_says_the_server_is_down(down_server):
    import gradio as gr

    chat = load_snippet("gui/chat_gradio.py")
    assert chat.BASE_URL == down_server
    assert not chat.accepts_feedback()
    with pytest.raises(gr.Error, match="Cannot reach the model server"):
        next(chat.respond("Hello?", [], "Answer briefly.", 0.7, {}))


def test_gradio_history_becomes_plain_text():
    chat = load_snippet("gui/chat_gradio.py")
    assert chat.text_of("plain") == "plain"
    parts = [{"type": "text", "text": "two "}, {"type": "text", "text": "parts"}]
    assert chat.text_of(parts) == "two parts"
