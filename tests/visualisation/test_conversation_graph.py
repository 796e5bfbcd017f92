"""visualisation/conversation_graph.py: the fixture's two conversations become two trees, with
the regenerated answer and the edited question as branches at the right messages."""

import os

import pytest
from conversation_fixture import (
    A1,
    A1_AGAIN,
    A2,
    A2_EDITED,
    A3,
    Q1,
    Q2,
    Q2_EDITED,
    Q3,
    export,
    write_log,
)
from helpers import REPO, load_snippet, run_snippet

graph_module = load_snippet("visualisation/conversation_graph.py")


@pytest.fixture(scope="module")
def log_db(tmp_path_factory):
    path = tmp_path_factory.mktemp("log") / "requests.db"
    write_log(path)
    return path


def tree(graph, node) -> dict:
    """The subtree under `node` as nested {text: subtree}: easy to compare with what is expected."""
    return {graph.nodes[c]["text"]: tree(graph, c) for c in graph.successors(node)}


def test_structure(log_db):
    graph = graph_module.build_graph(graph_module.load_log(log_db))
    roots = {graph.nodes[n]["text"]: n for n in graph if graph.in_degree(n) == 0}
    assert set(roots) == {Q1, Q3}
    assert tree(graph, roots[Q1]) == {
        A1: {Q2: {A2: {}}, Q2_EDITED: {A2_EDITED: {}}},  # the edited question branches after A1
        A1_AGAIN: {},  # the regenerated answer branches at Q1
    }
    assert tree(graph, roots[Q3]) == {A3: {}}
    assert graph_module.branches(graph) == {"regenerated": 1, "edited": 1}
    shared = next(n for n in graph if graph.nodes[n]["text"] == A1)
    assert graph.nodes[shared]["requests"] == 3  # its own request and the two that continued it
    assert graph.nodes[shared]["rating"] == -1
    branch_edges = {
        (graph.nodes[a]["text"], graph.nodes[b]["text"])
        for a, b, branch in graph.edges(data="branch")
        if branch
    }
    assert branch_edges == {(Q1, A1), (Q1, A1_AGAIN), (A1, Q2), (A1, Q2_EDITED)}


def test_export_gives_the_same_graph(log_db, tmp_path):
    export(tmp_path / "export.json")
    from_log = graph_module.build_graph(graph_module.load_log(log_db))
    from_json = graph_module.build_graph(graph_module.load_export(tmp_path / "export.json"))
    assert set(from_log.edges) == set(from_json.edges)


def test_dot_and_png(log_db, tmp_path):
    graph = graph_module.build_graph(graph_module.load_log(log_db))
    dot = graph_module.to_dot(graph)
    assert dot.startswith("digraph") and dot.count("->") == graph.number_of_edges() == 7
    assert dot.count("style=dashed") == 4
    png = tmp_path / "g.png"
    out = run_snippet("visualisation/conversation_graph.py", str(log_db), "--png", str(png))
    assert out == (
        "5 requests, 2 conversations, 9 messages, 1 regenerated answers, 1 edited questions\n"
    )
    assert png.read_bytes()[:4] == b"\x89PNG"
    if os.environ.get("SCREENSHOTS") == "1":  # the image on the visualisation page
        graph_module.draw(graph, REPO / "docs/visualisation/img/conversation-graph.png")
