"""The same streaming chat in Gradio, over any OpenAI-compatible server, with like / dislike.

The server comes from OPENAI_BASE_URL; Gradio itself reads GRADIO_SERVER_PORT (default 7860)
and GRADIO_SERVER_NAME (default 127.0.0.1):

    OPENAI_BASE_URL=http://127.0.0.1:8000/v1 python snippets/gui/chat_gradio.py

gr.ChatInterface keeps the history per browser tab and streams whatever the function yields.
"""

import os

import gradio as gr
import httpx
import requests
from openai import APIConnectionError, APIStatusError, OpenAI, OpenAIError

BASE_URL = os.environ.get("OPENAI_BASE_URL", "http://127.0.0.1:8000/v1").rstrip("/")
API_KEY = os.environ.get("OPENAI_API_KEY", "none")  # local servers ignore it without --api-key
MAX_TOKENS = int(os.environ.get("CHAT_MAX_TOKENS", "256"))
client = OpenAI(base_url=BASE_URL, api_key=API_KEY, max_retries=0, timeout=60)


def accepts_feedback() -> bool:
    """Probe POST /v1/feedback with an empty body: a server that has the route rejects the body
    (400 or 422), one that has not answers 404. Like buttons are added only in the first case."""
    try:
        probe = requests.post(
            f"{BASE_URL}/feedback",
            json={},
            timeout=5,
            headers={"Authorization": f"Bearer {API_KEY}"},
        )
    except requests.RequestException:
        return False
    return probe.status_code in (400, 422)


def explain(error: Exception) -> str:
    """One sentence a user understands, instead of a traceback."""
    if isinstance(error, APIConnectionError):
        return f"Cannot reach the model server at {BASE_URL}. Is it running?"
    if isinstance(error, APIStatusError):
        return f"The model server answered {error.status_code}: {error.message}"
    return f"The answer was interrupted: {error}"


def text_of(content) -> str:
    """Gradio hands history content over as a list of parts; the API wants plain text."""
    if isinstance(content, str):
        return content
    return "".join(part.get("text", "") for part in content if isinstance(part, dict))


def respond(message: str, history: list[dict], system_prompt: str, temperature: float, ids: dict):
    """Stream the answer: each yield is the answer so far, plus the response ids by position in
    the chat (what a like is sent for)."""
    messages = [
        {"role": "system", "content": system_prompt},
        *({"role": m["role"], "content": text_of(m["content"])} for m in history),
        {"role": "user", "content": message},
    ]
    answer, position = "", len(history) + 1  # the user's message, then this answer
    try:
        model = client.models.list().data[0].id
        stream = client.chat.completions.create(
            model=model,
            messages=messages,
            stream=True,
            temperature=temperature,
            max_tokens=MAX_TOKENS,
        )
        for chunk in stream:
            ids = {**ids, position: chunk.id}
            if chunk.choices and chunk.choices[0].delta.content:
                answer += chunk.choices[0].delta.content
                yield answer, ids
    except (OpenAIError, httpx.HTTPError) as error:
        raise gr.Error(explain(error), print_exception=False) from None
    yield answer, ids


def send_rating(like: gr.LikeData, ids: dict) -> None:
    """Like is a rating of 1, dislike of -1, for the response shown at that position."""
    request_id = ids.get(like.index)
    if request_id is None:
        return
    try:
        requests.post(
            f"{BASE_URL}/feedback",
            headers={"Authorization": f"Bearer {API_KEY}"},
            json={"id": request_id, "rating": 1 if like.liked else -1},
            timeout=5,
        ).raise_for_status()
        gr.Info("Thanks: your rating was recorded.")
    except requests.RequestException as error:
        gr.Warning(f"Rating not recorded: {error}")


with gr.Blocks(title="Chat") as demo:
    ids = gr.State({})
    settings = [
        gr.Textbox(
            "You are a helpful assistant. Answer briefly.", label="System prompt", render=False
        ),
        gr.Slider(0.0, 2.0, value=0.7, step=0.1, label="Temperature", render=False),
    ]
    chat = gr.ChatInterface(
        respond, title="Chat", additional_inputs=[*settings, ids], additional_outputs=[ids]
    )
    if accepts_feedback():
        chat.chatbot.like(send_rating, inputs=[ids])
    gr.Markdown(f"Server: `{BASE_URL}`")

if __name__ == "__main__":
    demo.launch()
