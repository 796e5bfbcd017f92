"""Conversations from the request log, drawn as trees of messages with their branches.

A chat request carries the whole conversation so far, so each logged request is one path:
its messages, then the answer. Paths that share a prefix share nodes. A node with two answers
below it is a regenerated answer (same question, new answer); a node with two questions below
it is an edited question (same conversation so far, a different question). The system prompt
and the first question identify a conversation: editing the very first question cannot be told
apart from starting again, so it starts a new tree.

    python snippets/visualisation/conversation_graph.py requests.db --png conversations.png
    python snippets/visualisation/conversation_graph.py export.json --png conversations.png
"""

import argparse
import contextlib
import hashlib
import json
import sqlite3
import textwrap
from collections import Counter
from pathlib import Path

import networkx as nx
from matplotlib.figure import Figure  # not pyplot: no window, no global state, safe in a web app

CHAT_ROUTE = "/v1/chat/completions"
COLOURS = {"user": "#dbe4ff", "assistant": "#d3f9d8"}
RATING_EDGE = {1: "#2b8a3e", -1: "#c92a2a", None: "#868e96"}


def load_log(path: Path | str) -> list[dict]:
    """Answered chat requests from a request log (snippets/backends/request_log.py), oldest first,
    with their rating when one was given."""
    with contextlib.closing(sqlite3.connect(path)) as conn:
        rows = conn.execute(
            "SELECT r.id, r.created_at, r.input, r.output, f.rating FROM requests r "
            "LEFT JOIN feedback f ON f.request_id = r.id "
            "WHERE r.route = ? AND r.status = 200 ORDER BY r.created_at",
            (CHAT_ROUTE,),
        ).fetchall()
    return [
        {
            "id": id_,
            "created_at": created,
            "messages": json.loads(input_),
            "answer": json.loads(output) if output else "",
            "rating": rating,
        }
        for id_, created, input_, output, rating in rows
    ]


def load_export(path: Path | str) -> list[dict]:
    """The same records from a JSON export: a list of {id, messages, answer[, rating]}."""
    return json.loads(Path(path).read_text())


def node_id(parent: str, role: str, text: str) -> str:
    """A message's identity is its whole conversation so far: equal prefixes give equal ids."""
    return hashlib.sha256(f"{parent}\x00{role}\x00{text}".encode()).hexdigest()[:16]


def build_graph(requests: list[dict]) -> nx.DiGraph:
    """One node per distinct message-in-context, an edge from each message to the next."""
    graph = nx.DiGraph()
    for request in requests:
        system = "\n".join(m["content"] for m in request["messages"] if m["role"] == "system")
        path = [m for m in request["messages"] if m["role"] != "system"]
        path.append({"role": "assistant", "content": request["answer"]})
        parent = node_id("", "system", system)
        for depth, message in enumerate(path):
            node = node_id(parent, message["role"], message["content"])
            if node not in graph:
                graph.add_node(
                    node,
                    role=message["role"],
                    text=message["content"],
                    depth=depth,
                    requests=0,
                    rating=None,
                )
                if depth:
                    graph.add_edge(parent, node)
            graph.nodes[node]["requests"] += 1
            parent = node
        graph.nodes[parent].update(request_id=request["id"], rating=request.get("rating"))
    for node in graph:
        children = list(graph.successors(node))
        for child in children:
            graph.edges[node, child]["branch"] = len(children) > 1
    return graph


def branches(graph: nx.DiGraph) -> Counter:
    """How many extra answers (regenerated) and extra questions (edited) the graph holds."""
    kinds = Counter()
    for node in graph:
        if (n := graph.out_degree(node)) > 1:
            role = graph.nodes[next(graph.successors(node))]["role"]
            kinds["regenerated" if role == "assistant" else "edited"] += n - 1
    return kinds


def tree_layout(graph: nx.DiGraph) -> dict:
    """Top-down positions: leaves side by side, each parent centred over its children."""
    positions, next_x = {}, [0.0]

    def place(node) -> float:
        children = sorted(graph.successors(node), key=lambda c: graph.nodes[c]["text"])
        x = sum(place(c) for c in children) / len(children) if children else next_x[0]
        if not children:
            next_x[0] += 1
        positions[node] = (x, -graph.nodes[node]["depth"])
        return x

    for root in sorted(n for n in graph if graph.in_degree(n) == 0):
        place(root)
        next_x[0] += 0.5  # a gap between conversations
    return positions


def label(graph: nx.DiGraph, node, width: int = 18, lines: int = 3) -> str:
    data = graph.nodes[node]
    prefix = "Q: " if data["role"] == "user" else "A: "
    return "\n".join(textwrap.wrap(prefix + data["text"], width, max_lines=lines, placeholder=" …"))


def draw(graph: nx.DiGraph, path: Path | str) -> None:
    """The graph as a PNG: questions blue, answers green, a rated answer's border green (thumbs
    up) or red (thumbs down), branch edges dashed."""
    positions = tree_layout(graph)
    width = max(x for x, _ in positions.values()) + 1
    depth = max(-y for _, y in positions.values()) + 1
    fig = Figure(figsize=(max(6, 1.9 * width), max(3, 1.3 * depth)))
    ax = fig.subplots()
    for branch in (False, True):
        edges = [e for e in graph.edges if graph.edges[e]["branch"] == branch]
        nx.draw_networkx_edges(
            graph,
            positions,
            edgelist=edges,
            ax=ax,
            arrows=False,
            style="--" if branch else "-",
            edge_color="#495057",
        )
    for node, (x, y) in positions.items():
        data = graph.nodes[node]
        ax.text(
            x,
            y,
            label(graph, node),
            ha="center",
            va="center",
            fontsize=8,
            bbox={
                "boxstyle": "round,pad=0.4",
                "facecolor": COLOURS[data["role"]],
                "edgecolor": RATING_EDGE[data["rating"]],
                "linewidth": 2 if data["rating"] else 1,
            },
        )
    ax.set_xlim(-0.7, width - 0.3)
    ax.set_ylim(-depth + 0.5, 0.5)
    ax.axis("off")
    fig.text(
        0.01,
        0.01,
        "blue: question, green: answer; border green: thumbs up, red: thumbs "
        "down; dashed: a branch (regenerated answer or edited question)",
        fontsize=8,
        color="#495057",
    )
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def to_dot(graph: nx.DiGraph) -> str:
    """The graph in Graphviz's DOT language, for st.graphviz_chart (drawn in the browser)."""

    def quoted(text: str) -> str:
        return '"' + text.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n") + '"'

    lines = [
        "digraph conversations {",
        "rankdir=TB;",
        'node [shape=box, style="rounded,filled", fontname="sans-serif", fontsize=10];',
    ]
    for node, data in graph.nodes(data=True):
        lines.append(
            f"{quoted(node)} [label={quoted(label(graph, node, 24))}, "
            f"fillcolor={quoted(COLOURS[data['role']])}, "
            f"color={quoted(RATING_EDGE[data['rating']])}];"
        )
    for parent, child, data in graph.edges(data=True):
        style = " [style=dashed]" if data["branch"] else ""
        lines.append(f"{quoted(parent)} -> {quoted(child)}{style};")
    return "\n".join([*lines, "}"])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("source", type=Path, help="a request log (.db) or a JSON export (.json)")
    parser.add_argument("--png", type=Path, help="write the drawing here")
    args = parser.parse_args()
    if not args.source.is_file():
        parser.exit(2, f"error: no file at {args.source}\n")
    requests = load_export(args.source) if args.source.suffix == ".json" else load_log(args.source)
    graph = build_graph(requests)
    kinds = branches(graph)
    roots = sum(1 for n in graph if graph.in_degree(n) == 0)
    print(
        f"{len(requests)} requests, {roots} conversations, {graph.number_of_nodes()} messages, "
        f"{kinds['regenerated']} regenerated answers, {kinds['edited']} edited questions"
    )
    if args.png:
        draw(graph, args.png)


if __name__ == "__main__":
    main()
