"""gui/chat_gradio.py in Chromium: `python snippets/gui/chat_gradio.py` with the port from
GRADIO_SERVER_PORT; a question goes to the real LLM server, the answer streams, a dislike reaches
the server's request log."""

import sys

from browser_kit import launch, new_ratings, screenshot, watch_growth
from helpers import REPO, free_port


def test_streams_an_answer_and_sends_a_rating(page, llm_server):
    port = free_port()
    env = {
        "OPENAI_BASE_URL": llm_server.url + "/v1",
        "GRADIO_SERVER_PORT": str(port),
        "GRADIO_ANALYTICS_ENABLED": "False",
        "CHAT_MAX_TOKENS": "32",
    }
    with (
        launch(
            [sys.executable, str(REPO / "snippets/gui/chat_gradio.py")],
            env,
            f"http://127.0.0.1:{port}",
        ) as app,
        new_ratings(llm_server.log_db) as ratings,
    ):
        page.goto(app.url, wait_until="load")
        box = page.get_by_placeholder("Type a message...")
        box.fill("Name three colours.")
        box.press("Enter")
        answer = page.get_by_test_id("bot").last
        send = page.get_by_test_id("submit-button")  # the stop button takes its place meanwhile
        lengths = watch_growth(answer, lambda: answer.count() > 0 and send.is_visible())
        assert len(lengths) >= 3, f"the answer did not stream: {lengths}"
        assert page.get_by_test_id("user").count() == 1
        screenshot(page, "gui/img/chat-gradio.png", "tests/browser/test_chat_gradio.py")

        page.get_by_role("button", name="Dislike").click()
        page.get_by_text("your rating was recorded").wait_for()
    assert ratings == [-1]
