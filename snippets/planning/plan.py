"""Turn a customer-needs spec into a costed deployment plan in Markdown, with the reasons.

    python snippets/planning/plan.py data/specs/internal-chat.yaml > plan.md

Steps 1 to 5 of the deployment path in one pass: validate the needs, size the model's memory,
estimate each host's throughput from its accelerator's data-sheet figures (or, for the local
embedding model on CPUs, from this guide's own benchmark), count replicas for the peak, cost the
month, drop every host that breaks a rule or the budget (saying why), and compare with an API.
"""

import functools
import json
import math
import sys
from pathlib import Path

import yaml

sys.path.insert(0, str(Path(__file__).parent))
import budget  # noqa: E402
import compute  # noqa: E402
from hosts import DATA, load_gpus, load_hosts, rule_exclusion  # noqa: E402
from spec import SpecError, known_model_names, load_spec  # noqa: E402

REPO = DATA.parent
DTYPE = "bfloat16"
DECODE_EFFICIENCY = 0.6  # share of the bandwidth bound real engines reach (assumption, see the page)
COMPUTE_EFFICIENCY = 0.35  # share of data-sheet FLOP/s reached in prefill and encoders (assumption)
TARGET_UTILISATION = 0.7
MAX_BATCH = 64
SERVING_CEILING_RPS = 2000  # what one replica's HTTP front handles, whatever the accelerator (assumption)


def llm_capacity(config: dict, gpu: dict, spec: dict) -> dict:
    """Requests/s of one replica at the largest batch whose request latency still meets the p95 target."""
    tokens = spec["input_tokens"] + spec["output_tokens"]
    fit = compute.sequences_that_fit(config, gpu["memory_gib"] * 2**30, tokens, DTYPE)
    if fit == 0:
        return {"fits": False}
    prefill_s = compute.prefill_flops(config, spec["input_tokens"]) / (gpu["bf16_tflops"] * 1e12 * COMPUTE_EFFICIENCY)
    for batch in range(min(fit, MAX_BATCH), 0, -1):
        decode_tps = DECODE_EFFICIENCY * compute.decode_tokens_per_second_bound(
            config, gpu["bandwidth_gb_s"] * 1e9, batch, spec["input_tokens"] + spec["output_tokens"] // 2, DTYPE)
        latency = prefill_s + spec["output_tokens"] / (decode_tps / batch)
        if latency * 1000 <= spec["latency_p95_ms"]:
            return {"fits": True, "batch": batch, "capacity_rps": 1 / (prefill_s + spec["output_tokens"] / decode_tps),
                    "latency_s": latency}
    return {"fits": True, "too_slow": latency}


@functools.cache
def measured_cpu_embeddings_rps() -> float:
    """Best requests/s of this guide's embedding server on 2 CPU cores, from its benchmark."""
    measured = json.loads((REPO / "benchmarks" / "results" / "embedding_server.json").read_text())
    return max(r["requests_per_s"] for r in measured["server"] if r["mode"] == "batching on")


def encoder_capacity(config: dict, gpu: dict | None, spec: dict) -> dict:
    """Encoders are compute-bound: FLOPs per request over the FLOP/s reached; on CPUs, measured."""
    if gpu is None:
        if spec["model"] != "all-minilm-l6-v2":
            return {"fits": False}
        return {"fits": True, "capacity_rps": measured_cpu_embeddings_rps(), "latency_s": None, "measured": True}
    flops = 2 * compute.parameter_count(config) * spec["input_tokens"]
    capacity = min(gpu["bf16_tflops"] * 1e12 * COMPUTE_EFFICIENCY / flops, SERVING_CEILING_RPS)
    return {"fits": True, "capacity_rps": capacity, "latency_s": None, "measured": False}


def evaluate(spec: dict, config: dict, host: dict, gpus: dict, n_params: int) -> dict:
    """One host: its capacity, replicas and monthly cost, or the reason it is out."""
    row = {"host": host}
    reason = rule_exclusion(spec, host)
    if reason:
        return {**row, "out": reason}
    gpu = gpus.get(host["gpu"]) if host["gpu"] else None
    is_llm = spec["use_case"] in ("chat", "generation")
    if gpu is None and (is_llm or n_params > 1e9):
        return {**row, "out": f"no accelerator: a {n_params / 1e9:.1f} B-parameter {spec['use_case']} model needs a GPU"}
    cap = llm_capacity(config, gpu, spec) if is_llm else encoder_capacity(config, gpu, spec)
    if not cap["fits"]:
        need = compute.weight_bytes(config, DTYPE) / 2**30
        return {**row, "out": f"does not fit: {need:.1f} GiB of weights plus the KV cache exceed {gpu['memory_gib']} GiB"
                if gpu else "no CPU throughput measured for this model"}
    if "too_slow" in cap:
        return {**row, "out": f"too slow: {cap['too_slow']:.1f} s per request even alone > p95 target "
                              f"{spec['latency_p95_ms'] / 1000:g} s"}
    row.update(cap)
    spare = 1 if spec["availability"] >= 0.999 else 0
    row["replicas"] = budget.replicas_needed(spec["peak_requests_per_second"], cap["capacity_rps"] * host["gpus"]
                                             if host["gpus"] else cap["capacity_rps"], TARGET_UTILISATION, spare)
    if host["price_per_hour"] is None:
        return {**row, "uncosted": host.get("note", "no published price")}
    row["monthly"] = budget.always_on_monthly(host["price_per_hour"], row["replicas"])
    if host["scale_to_zero"]:
        row["monthly"] = min(row["monthly"], budget.scale_to_zero_monthly(
            host["price_per_hour"], spec["requests_per_day"], cap["capacity_rps"], TARGET_UTILISATION,
            cap.get("latency_s") or 0, row["replicas"]))
    if row["monthly"] > spec["budget_per_month_usd"]:
        return {**row, "out": f"over budget: ${row['monthly']:,.0f} a month > ${spec['budget_per_month_usd']:,}"}
    return row


def plan(spec_path: Path) -> str:
    spec = load_spec(spec_path, known_model_names())
    models = yaml.safe_load((DATA / "model_configs.yaml").read_text())["models"]
    config, source = models[spec["model"]]["config"], models[spec["model"]]["source"]
    api_prices = yaml.safe_load((DATA / "hosts.yaml").read_text())["api_prices"]
    gpus, n_params = load_gpus(), compute.parameter_count(config)
    rows = [evaluate(spec, config, host, gpus, n_params) for host in load_hosts()]
    kept = sorted((r for r in rows if "monthly" in r and "out" not in r), key=lambda r: r["monthly"])
    is_llm = spec["use_case"] in ("chat", "generation")

    lines = [f"# Plan: {spec['name']}", "",
             f"Generated by `snippets/planning/plan.py` from `{spec_path.name}`. Prices and hardware figures come "
             "from `data/` with their sources and dates; throughput is an estimate until you measure it.", "",
             "## Needs", "",
             f"- {spec['use_case']}, {spec['requests_per_day']:,} requests a day, peak {spec['peak_requests_per_second']:g}/s",
             f"- {spec['input_tokens']} input and {spec['output_tokens']} output tokens per request; "
             f"p95 latency target {spec['latency_p95_ms'] / 1000:g} s; availability {spec['availability']:.1%}",
             f"- data: PII {'yes' if spec['privacy']['pii'] else 'no'}, residency "
             f"{', '.join(spec['privacy']['data_residency'])}, on-premises "
             f"{'required' if spec['privacy']['on_premises'] else 'not required'}; budget ${spec['budget_per_month_usd']:,} a month",
             f"- quality bar: {spec['quality_bar']}", "",
             "## Model and format", "",
             f"- **{spec['model']}**: {n_params / 1e9:.2f} B parameters (config: {source})",
             f"- weights in {DTYPE}: {compute.weight_bytes(config, DTYPE) / 2**30:.2f} GiB; "
             + (f"KV cache {compute.kv_bytes_per_token(config, DTYPE) / 2**10:.0f} KiB per token, "
                f"{compute.kv_bytes_per_token(config, DTYPE) * (spec['input_tokens'] + spec['output_tokens']) / 2**20:.0f} MiB "
                "per request at full length" if is_llm else "no KV cache (one forward pass per request)"),
             "- format: " + ("safetensors in bfloat16, served by an engine with continuous batching (vLLM or SGLang); "
                             "measure an int8 or 4-bit variant on the quality bar before using it to save memory"
                             if is_llm else "safetensors (or ONNX for ONNX Runtime), served with dynamic batching"), "",
             "## Host shortlist", ""]
    if kept:
        lines += ["| host | replicas at peak | capacity per replica | monthly cost | per 1,000 requests | basis | price as of |",
                  "|---|---:|---:|---:|---:|---|---|"]
        for r in kept:
            capacity = f"{r['capacity_rps']:.2f} req/s" + (" (measured)" if r.get("measured") else "")
            lines.append(f"| {r['host']['name']} | {r['replicas']} | {capacity} | ${r['monthly']:,.0f} | "
                         f"${budget.per_request(r['monthly'], spec['requests_per_day']) * 1000:.3f} | "
                         f"{r['host']['price_basis']} | [{r['host']['as_of']}]({r['host']['source']}) |")
        best = kept[0]
        lines += ["", f"**Recommendation: {best['host']['name']}**, {best['replicas']} replica(s), about "
                      f"${best['monthly']:,.0f} a month."]
    else:
        lines.append("**No costed host meets every rule and the budget.** See the exclusions and the hosts to price below.")
    uncosted = [r for r in rows if "uncosted" in r and "out" not in r]
    if uncosted:
        lines += ["", "To price yourself (no published price in the data):", ""]
        lines += [f"- {r['host']['name']}: {r['replicas']} replica(s) at {r['capacity_rps']:.2f} req/s each; "
                  f"{r['uncosted']}" for r in uncosted]
    lines += ["", "## Excluded, and why", ""]
    lines += [f"- {r['host']['name']}: {r['out']}" for r in rows if "out" in r] or ["- none"]
    api = next(a for a in api_prices if ("embedding" in a["name"]) != is_llm)
    api_cost = budget.api_monthly(spec["requests_per_day"], spec["input_tokens"], spec["output_tokens"],
                                  api["input_per_million"], api["output_per_million"])
    lines += ["", "## Against a per-token API", "",
              f"{api['name']} at ${api['input_per_million']} / ${api['output_per_million']} per 1M input / output "
              f"tokens ([as of {api['as_of']}]({api['source']})) would cost about ${api_cost:,.0f} a month for this traffic."]
    if kept:
        even = budget.break_even_requests_per_day(kept[0]["monthly"], spec["input_tokens"], spec["output_tokens"],
                                                  api["input_per_million"], api["output_per_million"])
        lines.append(f"Self-hosting on the recommended host breaks even above about {math.ceil(even):,} requests a day "
                     "(a different model: compare quality on your evaluation set too).")
    lines += ["", "## Assumptions", "",
              f"- engines reach {DECODE_EFFICIENCY:.0%} of the memory-bandwidth bound in decode and "
              f"{COMPUTE_EFFICIENCY:.0%} of data-sheet FLOP/s in prefill; batch at most {MAX_BATCH}",
              f"- replicas sized for the peak at {TARGET_UTILISATION:.0%} utilisation"
              + (", plus one spare for the availability target" if spec["availability"] >= 0.999 else ""),
              "- a scale-to-zero host stays up while requests keep arriving within its idle timeout "
              f"({budget.IDLE_TIMEOUT_S // 60} minutes assumed), and never costs more than always on; "
              "cold starts are not costed",
              "- always-on hosts are billed 730 hours a month"]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    if len(sys.argv) != 2:
        sys.exit("usage: python snippets/planning/plan.py SPEC.yaml")
    try:
        print(plan(Path(sys.argv[1])), end="")
    except SpecError as error:
        sys.exit(str(error))
