"""gui/chat_streamlit.py in Chromium: a question goes to the real LLM server, the answer appears
piece by piece, and its thumbs up reaches the server's request log."""

from browser_kit import new_ratings, screenshot, streamlit_app, watch_growth


def test_streams_an_answer_and_sends_a_rating(page, llm_server):
    env = {"OPENAI_BASE_URL": llm_server.url + "/v1", "CHAT_MAX_TOKENS": "32"}
    with (
        streamlit_app("gui/chat_streamlit.py", env) as app,
        new_ratings(llm_server.log_db) as ratings,
    ):
        page.goto(app.url, wait_until="load")
        box = page.get_by_test_id("stChatInputTextArea")
        box.fill("Name three colours.")
        box.press("Enter")
        answer = page.get_by_test_id("stChatMessage").nth(1).get_by_test_id("stChatMessageContent")
        thumbs = page.get_by_test_id("stFeedback")
        lengths = watch_growth(answer, lambda: thumbs.count() > 0)
        assert len(lengths) >= 3, f"the answer did not stream: {lengths}"
        assert page.get_by_test_id("stChatMessage").count() == 2
        assert page.get_by_test_id("stException").count() == 0
        screenshot(page, "gui/img/chat-streamlit.png", "tests/browser/test_chat_streamlit.py")

        thumbs.get_by_role("radio", name="Thumbs up").click()
        page.get_by_test_id("stToast").wait_for()
        assert "recorded" in page.get_by_test_id("stToast").inner_text()
    assert ratings == [1]
