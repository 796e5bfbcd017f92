"""MkDocs hook: render the data files into pages, so each fact that ages lives in one place.

A page asks for a rendering with a marker line such as `<!-- render: backends_table -->`.
An unknown marker stops the build.
"""

import json
import re
import sys
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[1]
DATA = REPO / "data"
sys.path.insert(0, str(REPO / "snippets" / "planning"))
import plan as planner  # noqa: E402  (the planning toolkit, for the example plans)
MARKER = re.compile(r"^<!-- render: (\w+)(?: ([\w.-]+))? -->$", re.M)
STATUS_BADGE = {"active": "active", "maintenance mode": "**maintenance mode**",
                "limited maintenance": "**limited maintenance**", "archived": "**archived**",
                "quiet": "quiet"}


def load(name: str) -> dict:
    return yaml.safe_load((DATA / f"{name}.yaml").read_text(encoding="utf-8"))


def backends_table() -> str:
    data = load("backends")
    rows = ["| project | for | API | batching | hardware | licence | status |", "|---|---|---|---|---|---|---|"]
    for b in data["backends"]:
        status = STATUS_BADGE.get(b["status"], b["status"])
        rows.append(f"| [{b['name']}]({b['link']}) | {b['for']} | {', '.join(b['api'])} | {b['batching']} | "
                    f"{b['hardware']} | {b['licence']} | {status} |")
    return "\n".join(rows) + f"\n\nAs of {data['as_of']}. Source: {data['source']}\n"


def backends_status() -> str:
    data = load("backends")
    rows = ["| project | status | evidence | checked | start it with |", "|---|---|---|---|---|"]
    for b in data["backends"]:
        rows.append(f"| {b['name']} | {b['status']} | {b['evidence']} | {b['checked']} | `{b['start']}` |")
    return "\n".join(rows) + "\n"


def backend_guide() -> str:
    data = load("backends")
    return "\n".join(f"- **{b['name']}** when {b['choose_when']}" for b in data["backends"]) + "\n"


def tutorials_table(group: str | None = None) -> str:
    """The external tutorials, or only one `group` of them (the marker's argument, e.g. `study`)."""
    data = load("tutorials")
    rows = ["| tutorial | teaches | published | status |", "|---|---|---|---|"]
    for t in data["tutorials"]:
        if group and t.get("group") != group:
            continue
        status = t["status"]
        if t.get("replacement"):
            archived = t["replacement"].startswith("https://web.archive.org/")
            label = "archived copy" if archived else "replacement"
            status += f"; [{label}]({t['replacement']})"
        if t.get("note"):
            status += f". {t['note']}"
        rows.append(f"| [{t['title']}]({t['url']}) | {t['teaches']} | {t['published']} | {status} |")
    return "\n".join(rows) + f"\n\nStatus as of {data['as_of']}.\n"


def frontends_table() -> str:
    data = load("frontends")
    rows = ["| project | what it gives you | status | evidence |", "|---|---|---|---|"]
    rows += [f"| [{f['name']}]({f['link']}) | {f['gives']} | {f['status']} | {f['evidence']} |" for f in data["frontends"]]
    return "\n".join(rows) + f"\n\nStatus as of {data['as_of']}.\n"


def hosts_table() -> str:
    data = load("hosts")
    rows = ["| host | kind | accelerator | price per hour | basis | scale to zero | regions | price as of |",
            "|---|---|---|---:|---|---|---|---|"]
    for h in data["hosts"]:
        price = f"${h['price_per_hour']:g}" if h["price_per_hour"] is not None else "not published here"
        source = f"[{h['as_of']}]({h['source']})" if h["source"].startswith("http") else f"{h['as_of']} ({h['source']})"
        rows.append(f"| {h['name']} | {h['kind']} | {h['gpu'] or 'none'} | {price} | {h['price_basis']} | "
                    f"{'yes' if h['scale_to_zero'] else 'no'} | {', '.join(h['regions'])} | {source} |")
    return "\n".join(rows) + "\n"


def plan(spec_name: str) -> str:
    """The deployment plan of one example spec, generated at build time; headings moved down one level."""
    markdown = planner.plan(DATA / "specs" / f"{spec_name}.yaml")
    return re.sub(r"^#", "##", markdown, flags=re.M)


def measured_gains() -> str:
    """The batching gains, read from the benchmark results so the prose never goes stale."""
    results = REPO / "benchmarks" / "results"
    embed = json.loads((results / "embedding_server.json").read_text())
    llm = json.loads((results / "llm_server.json").read_text())
    embed_gain = embed["targets"]["speed-up from batching at concurrency 32"]["value"]
    llm_gain = llm["targets"]["continuous batching tok/s at 8 clients vs one at a time"]["value"]
    return (f"- dynamic batching: {embed_gain} the embedding requests per second of the same server without it, "
            f"at 32 concurrent clients ([measured](../backends/batching.md#measured-gain), {embed['cpu_cores']} CPU cores);\n"
            f"- continuous batching: {llm_gain} the LLM output tokens per second of one request at a time, "
            f"at 8 concurrent clients ([measured](../backends/llm-serving.md#measured), {llm['cpu_cores']} CPU cores).\n")


RENDERERS = {f.__name__: f for f in (measured_gains, backends_table, backends_status, backend_guide, tutorials_table,
                                     frontends_table, hosts_table, plan)}


def render(markdown: str) -> str:
    def replace(match: re.Match) -> str:
        name, argument = match.groups()
        if name not in RENDERERS:
            raise ValueError(f"unknown render marker {name!r}; known: {sorted(RENDERERS)}")
        return RENDERERS[name](argument) if argument else RENDERERS[name]()

    return MARKER.sub(replace, markdown)


def on_page_markdown(markdown, page, config, files):
    return render(markdown)
