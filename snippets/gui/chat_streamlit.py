"""A streaming chat in Streamlit over any OpenAI-compatible server, with thumbs up / down.

The server comes from OPENAI_BASE_URL (the variable the `openai` client reads), so the same app
talks to the LLM server of this guide, vLLM, TGI, SGLang or llama.cpp's server:

    OPENAI_BASE_URL=http://127.0.0.1:8000/v1 streamlit run snippets/gui/chat_streamlit.py

Streamlit reruns this script from the top on every click; the conversation lives in
st.session_state, one per browser tab.
"""

import os

import httpx
import requests
import streamlit as st
from openai import APIConnectionError, APIStatusError, OpenAI, OpenAIError

BASE_URL = os.environ.get("OPENAI_BASE_URL", "http://127.0.0.1:8000/v1").rstrip("/")
API_KEY = os.environ.get("OPENAI_API_KEY", "none")  # local servers ignore it without --api-key
MAX_TOKENS = int(os.environ.get("CHAT_MAX_TOKENS", "256"))  # the sidebar slider starts here


@st.cache_resource
def client() -> OpenAI:
    """One client per server process; no retries, so a down server is reported at once."""
    return OpenAI(base_url=BASE_URL, api_key=API_KEY, max_retries=0, timeout=60)


@st.cache_data(ttl=60, show_spinner=False)
def model_name() -> str:
    """The first model the server lists: whatever it serves, without configuring its name."""
    return client().models.list().data[0].id


@st.cache_data(ttl=60, show_spinner=False)
def accepts_feedback() -> bool:
    """Probe POST /v1/feedback with an empty body: a server that has the route rejects the body
    (400 or 422), one that has not answers 404. Thumbs are shown only in the first case."""
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


def stream_answer(messages: list[dict], temperature: float, max_tokens: int, reply: dict):
    """Yield the answer's text pieces as they arrive; store the response id in `reply`."""
    stream = client().chat.completions.create(
        model=model_name(),
        messages=messages,
        temperature=temperature,
        max_tokens=max_tokens,
        stream=True,
    )
    for chunk in stream:
        reply["id"] = chunk.id  # the id POST /v1/feedback rates
        if chunk.choices and chunk.choices[0].delta.content:
            yield chunk.choices[0].delta.content


def send_rating(request_id: str) -> None:
    """Callback of a thumbs widget: 1 is thumbs up, 0 thumbs down, None a withdrawn click."""
    value = st.session_state[f"rating-{request_id}"]
    if value is None:
        return
    try:
        sent = requests.post(
            f"{BASE_URL}/feedback",
            timeout=5,
            headers={"Authorization": f"Bearer {API_KEY}"},
            json={"id": request_id, "rating": 1 if value == 1 else -1},
        )
        sent.raise_for_status()
        st.toast("Thanks: your rating was recorded.")
    except requests.RequestException as error:
        st.toast(f"Rating not recorded: {error}")


def show_history(feedback: bool) -> None:
    for message in st.session_state.messages:
        with st.chat_message(message["role"]):
            st.markdown(message["content"])
            if feedback and message.get("id"):
                st.feedback(
                    "thumbs",
                    key=f"rating-{message['id']}",
                    on_change=send_rating,
                    args=(message["id"],),
                )


st.set_page_config(page_title="Chat", page_icon=":speech_balloon:")
st.title("Chat")
with st.sidebar:
    system_prompt = st.text_area("System prompt", "You are a helpful assistant. Answer briefly.")
    temperature = st.slider("Temperature", 0.0, 2.0, 0.7, 0.1)
    max_tokens = st.slider("Max answer tokens", 16, 1024, MAX_TOKENS, 16)
    if st.button("New conversation"):
        st.session_state.messages = []
    st.caption(f"Server: {BASE_URL}")

st.session_state.setdefault("messages", [])
show_history(accepts_feedback())

if question := st.chat_input("Ask the model"):
    with st.chat_message("user"):
        st.markdown(question)
    history = [{"role": m["role"], "content": m["content"]} for m in st.session_state.messages]
    messages = [
        {"role": "system", "content": system_prompt},
        *history,
        {"role": "user", "content": question},
    ]
    reply = {}
    with st.chat_message("assistant"):
        try:
            answer = st.write_stream(stream_answer(messages, temperature, max_tokens, reply))
        except (OpenAIError, httpx.HTTPError) as error:
            st.error(explain(error))
            st.stop()
    st.session_state.messages += [
        {"role": "user", "content": question},
        {"role": "assistant", "content": answer, "id": reply.get("id")},
    ]
    st.rerun()  # draw the new answer with its thumbs
