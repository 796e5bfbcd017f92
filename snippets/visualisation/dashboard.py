"""Operations dashboard: live charts from the servers' /metrics, feedback per model version and
the conversation graph from the request log.

    LLM_SERVER_URL=http://127.0.0.1:8000 EMBEDDING_SERVER_URL=http://127.0.0.1:8001 \\
    REQUEST_LOG=requests.db streamlit run snippets/visualisation/dashboard.py

With LLM_ENGINE=vllm the LLM charts read vLLM's own metric names instead of this guide's.
Every setting can also be changed in the sidebar. The dashboard keeps the scrapes of the last ten
minutes in the browser session; Prometheus and Grafana do the same job for history longer than
that. It imports its two neighbours, dashboard_queries.py and conversation_graph.py.
"""

import os
import sqlite3
from pathlib import Path

import altair as alt
import conversation_graph
import dashboard_queries as queries
import networkx as nx
import pandas as pd
import requests
import streamlit as st

KEEP_S = 600  # seconds of scrapes kept per server
# chart title -> {series in dashboard_queries' points: its name in the legend}
REQUESTS_CHART = {"requests/s": "all", "errors/s (5xx)": "5xx", "rejected/s (4xx)": "4xx"}
LLM_CHARTS = {
    "Requests per second": REQUESTS_CHART,
    "Time to first token (s)": {"TTFT p50 (s)": "p50", "TTFT p95 (s)": "p95"},
    "Time per output token (s)": {"TPOT p50 (s)": "p50", "TPOT p95 (s)": "p95"},
    "Sequences in the batch and waiting": {
        "running sequences": "running",
        "waiting sequences": "waiting",
    },
    "Output tokens per second": {"output tokens/s": "tokens/s"},
}
EMBEDDING_CHARTS = {
    "Requests per second": REQUESTS_CHART,
    "Latency (s)": {"latency p50 (s)": "p50", "latency p95 (s)": "p95"},
    "Mean batch size (inputs)": {"mean batch size": "inputs"},
    "Queue depth (inputs)": {"queue depth": "inputs"},
}


def charts(frame: pd.DataFrame, layout: dict[str, dict[str, str]], per_row: int = 3) -> None:
    """One line chart per entry of `layout`, `per_row` side by side."""
    titles = list(layout)
    for start in range(0, len(titles), per_row):
        for column, title in zip(st.columns(per_row), titles[start : start + per_row]):
            with column:
                st.markdown(f"**{title}**")
                st.altair_chart(line_chart(frame, layout[title]), width="stretch")


def line_chart(frame: pd.DataFrame, series: dict[str, str]) -> alt.Chart:
    """`series` (column -> name in the legend) against clock time: Vega's own axis labels a
    window of seconds in milliseconds (".281"), and a flat zero as "0.000000"."""
    long = frame[list(series)].rename(columns=series).reset_index()
    long = long.melt("time", var_name="series", value_name="value").dropna()
    return (
        alt.Chart(long)
        .mark_line(point=True)
        .encode(
            x=alt.X("time:T", axis=alt.Axis(format="%H:%M:%S", title=None)),
            y=alt.Y("value:Q", title=None, axis=alt.Axis(format="~g")),  # 0, not 0.000000
            color=alt.Color("series:N", title=None),
        )
        .properties(height=220)
    )


def server_view(
    name: str, url: str, point, layout: dict, headline: list[str], window_s: float
) -> None:
    """Scrape one server, keep the scrape, draw its headline numbers and charts."""
    history = st.session_state.setdefault(f"scrapes {url}", [])
    try:
        history.append(queries.scrape(url))
    except requests.RequestException:
        st.warning(f"The {name} at {url} is not answering /metrics.")
        return
    history[:] = [s for s in history if history[-1].at - s.at <= KEEP_S]
    points = queries.window_points(history, point, window_s)
    if not points:
        st.info(f"{name}: collecting; the first rates appear after the next scrape.")
        return
    if not any(point["requests/s"] for point in points):  # flat zeros and empty percentiles
        st.info(f"{name}: no traffic yet; its charts appear with the first requests.")
        return
    frame = pd.DataFrame(points)
    frame["time"] = pd.to_datetime(frame["time"], unit="s")
    frame = frame.set_index("time")
    latest = points[-1]
    for column, key in zip(st.columns(len(headline)), headline):
        value = latest[key]
        column.metric(key, "no data" if value is None else f"{value:.3g}")
    charts(frame, layout)


def feedback_view(log_path: str, bucket_s: float) -> None:
    """Feedback ratio (thumbs up / rated) and volume per model version and period."""
    try:
        rows = queries.feedback_by_version(log_path, bucket_s)
    except sqlite3.Error as error:
        st.error(f"Cannot read the request log {log_path}: {error}")
        return
    if not rows:
        st.info("No feedback in the request log yet.")
        return
    frame = pd.DataFrame(rows)
    frame["period"] = pd.to_datetime(frame["period"], unit="s")
    left, right = st.columns(2)
    with left:
        st.markdown("**Feedback ratio (thumbs up / rated)**")
        st.line_chart(frame, x="period", y="ratio", color="model_version", height=260)
    with right:
        st.markdown("**Ratings per period**")
        st.bar_chart(frame, x="period", y="rated", color="model_version", height=260)


@st.fragment
def conversation_view(log_path: str, shown: int = 20) -> None:
    """The conversation graph of one conversation, picked among those with the most branches."""
    try:
        graph = conversation_graph.build_graph(conversation_graph.load_log(log_path))
    except (sqlite3.Error, ValueError) as error:
        st.error(f"Cannot read conversations from {log_path}: {error}")
        return
    if not graph:
        st.info("No chat conversations in the request log yet.")
        return
    roots = [n for n in graph if graph.in_degree(n) == 0]
    trees = {root: graph.subgraph({root, *nx.descendants(graph, root)}) for root in roots}
    ranked = sorted(roots, key=lambda r: -sum(d > 1 for _, d in trees[r].out_degree()))[:shown]
    root = st.selectbox(
        "Conversation",
        ranked,
        format_func=lambda r: (
            conversation_graph.label(graph, r, width=80, lines=1)
            + f"  ({trees[r].number_of_nodes()} messages)"
        ),
    )
    st.graphviz_chart(conversation_graph.to_dot(trees[root]))
    st.caption(
        "Questions blue, answers green; a thumbs up outlines an answer green, a thumbs down "
        "red; dashed edges start a branch (a regenerated answer or an edited question)."
    )


st.set_page_config(page_title="Operations dashboard", layout="wide")
with st.sidebar:
    llm_url = st.text_input("LLM server", os.environ.get("LLM_SERVER_URL", "http://127.0.0.1:8000"))
    engines = ["this guide's server", "vLLM"]
    default_engine = 1 if os.environ.get("LLM_ENGINE") == "vllm" else 0
    llm_engine = st.selectbox("LLM engine (its metric names)", engines, index=default_engine)
    embedding_url = st.text_input(
        "Embedding server", os.environ.get("EMBEDDING_SERVER_URL", "http://127.0.0.1:8001")
    )
    log_path = st.text_input("Request log", os.environ.get("REQUEST_LOG", "requests.db"))
    refresh_s = st.slider("Refresh every (s)", 2, 60, 5)
    window_s = st.slider("Rate and percentile window (s)", 10, 300, 60)
    bucket = st.selectbox("Feedback per", ["day", "hour"])


@st.fragment(run_every=refresh_s)
def live() -> None:
    """Everything that changes by itself, redrawn every `refresh_s` seconds."""
    st.subheader("LLM server")
    server_view(
        "LLM server",
        llm_url.rstrip("/"),
        queries.vllm_point if llm_engine == "vLLM" else queries.llm_point,
        LLM_CHARTS,
        ["requests/s", "errors/s (5xx)", "TTFT p95 (s)", "TPOT p95 (s)", "waiting sequences"],
        window_s,
    )
    st.subheader("Embedding server")
    server_view(
        "embedding server",
        embedding_url.rstrip("/"),
        queries.embedding_point,
        EMBEDDING_CHARTS,
        ["requests/s", "errors/s (5xx)", "latency p95 (s)", "queue depth"],
        window_s,
    )
    st.subheader("Feedback per model version")
    if Path(log_path).is_file():
        feedback_view(log_path, 86400 if bucket == "day" else 3600)
    else:
        st.info(f"No request log at {log_path}: start a server with --log-db, or set REQUEST_LOG.")


st.title("Operations dashboard")
live()
st.subheader("Conversations")
if Path(log_path).is_file():
    conversation_view(log_path)
