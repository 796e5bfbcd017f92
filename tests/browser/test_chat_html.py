"""gui/chat.html in Chromium: served from its own origin, the page streams an answer from the real
LLM server (which allows that origin by CORS), and names the problem when the server is down."""

import sys
from urllib.parse import urlparse

import pytest
from browser_kit import launch, screenshot, watch_growth
from helpers import SNIPPETS, free_port


@pytest.fixture(scope="module")
def chat_page(chat_page_origin):
    """`python -m http.server` serving snippets/gui/ on the origin the LLM server allows."""
    port = str(urlparse(chat_page_origin).port)
    args = [
        sys.executable,
        "-m",
        "http.server",
        port,
        "--bind",
        "127.0.0.1",
        "--directory",
        str(SNIPPETS / "gui"),
    ]
    with launch(args, {}, chat_page_origin, "/chat.html"):
        yield chat_page_origin + "/chat.html"


def ask(page, question: str) -> list[int]:
    """Send a question; return the lengths the answer showed until the form was free again."""
    page.get_by_placeholder("Ask the model").fill(question)
    page.get_by_placeholder("Ask the model").press("Enter")
    answer = page.locator(".turn").last
    send = page.get_by_role("button", name="Send")
    return watch_growth(answer, lambda: page.locator(".turn").count() == 2 and send.is_enabled())


def test_streams_an_answer(page, chat_page, llm_server):
    page.goto(f"{chat_page}?base_url={llm_server.url}/v1&max_tokens=32", wait_until="load")
    lengths = ask(page, "Tell me a long story about a river.")  # a long answer: many steps
    assert len(lengths) >= 3, f"the answer did not stream: {lengths}"
    assert page.locator(".assistant").inner_text().strip()
    assert page.locator(".error").count() == 0
    screenshot(page, "frontends/img/chat-html.png", "tests/browser/test_chat_html.py")


def test_a_down_server_is_named(page, chat_page):
    down = f"http://127.0.0.1:{free_port()}/v1"
    page.goto(f"{chat_page}?base_url={down}", wait_until="load")
    ask(page, "Hello?")
    error = page.locator(".error").inner_text()
    assert error.startswith(f"Cannot reach the model server at {down}.")
