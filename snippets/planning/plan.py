"""Turn a customer-needs spec into a costed deployment plan in Markdown, with the reasons.

    python snippets/planning/plan.py data/specs/internal-chat.yaml > plan.md

Steps 1 to 5 of the deployment path in one pass: validate the needs, size the model's memory at the
spec's dtypes, estimate each host's throughput from its accelerator's data-sheet figures (or, for the
local embedding model on CPUs, from this guide's own benchmark), split a model too big for one GPU
across a tensor-parallel group, count replicas for the peak, cost a day of traffic, drop every host
that breaks a rule or the budget (saying why, with the figure it rests on), and compare with an API.
"""

import argparse
import functools
import json
import math
import sys
from pathlib import Path

import yaml

sys.path.insert(0, str(Path(__file__).parent))
import budget
import compute
from hosts import DATA, load_gpus, load_hosts, price_for, rule_exclusion, usable_bytes
from spec import SpecError, known_model_names, load_spec

REPO = DATA.parent
DECODE_EFFICIENCY = (
    0.6  # share of the bandwidth bound real engines reach (assumption, see the page)
)
COMPUTE_EFFICIENCY = 0.35  # share of data-sheet FLOP/s reached in prefill and encoders (assumption)
TARGET_UTILISATION = 0.7
MAX_BATCH = 64
MEMORY_RESERVE = 0.10  # of each GPU's memory, for the runtime, CUDA graphs and fragmentation
SERVING_CEILING_RPS = (
    2000  # what one replica's HTTP front handles, whatever the accelerator (assumption)
)
TP_DEGREES = (1, 2, 4, 8)
FORMATS = {
    "bf16": "safetensors in bfloat16, the checkpoint as published",
    "fp8": "an FP8 checkpoint (W8A8, e.g. made with llm-compressor); the FP8 speed-up needs FP8 tensor cores "
    "(Ada, Hopper, Blackwell, MI300X), older GPUs run it as weight-only FP8",
    "int8": "an INT8 checkpoint (W8A8 with SmoothQuant-style scales, or weight-only W8A16)",
    "int4": "an AWQ or GPTQ int4 checkpoint (W4A16, group size 128), run with Marlin kernels",
}


def dtypes(spec: dict) -> tuple[str, str]:
    """Weights and KV-cache dtypes of a spec; bfloat16 unless it says otherwise."""
    chosen = spec.get("dtype", {})
    return chosen.get("weights", "bf16"), chosen.get("kv_cache", chosen.get("weights", "bf16"))


def tflops(gpu: dict, weights: str) -> float:
    """Data-sheet FLOP/s the prefill runs at: FP8 tensor cores for FP8 weights where the GPU has them;
    int8 and int4 are counted as weight-only (W8A16, W4A16), which computes in 16 bits."""
    return (
        gpu["fp8_tflops"] if weights == "fp8" and gpu["fp8_tflops"] else gpu["bf16_tflops"]
    ) * 1e12


def link_bytes_s(host: dict, gpu: dict) -> float:
    """One-way bandwidth between the GPUs of an instance: the GPU link where it has one, else PCIe."""
    both_ways = gpu["gpu_link_gb_s"] if host["interconnect"] == "gpu-link" else gpu["pcie_gb_s"]
    return both_ways / 2 * 1e9


def llm_capacity(config: dict, gpu: dict, spec: dict, tp: int = 1, link: float = math.inf) -> dict:
    """Requests/s of one tensor-parallel group of `tp` GPUs at the largest batch whose request latency
    still meets the p95 target; `link` is the one-way GPU-to-GPU bandwidth the all-reduces use."""
    weights, kv = dtypes(spec)
    tokens = spec["input_tokens"] + spec["output_tokens"]
    fit = compute.sequences_that_fit(
        config, usable_bytes(gpu), tokens, weights, MEMORY_RESERVE, kv, tp
    )
    if fit == 0:
        return {
            "fits": False,
            "tp": tp,
            "weights_per_gpu": compute.weight_bytes(config, weights) / tp,
        }
    allreduce = compute.allreduce_bytes_per_token(config, tp) / link
    prefill_s = (
        compute.prefill_flops(config, spec["input_tokens"])
        / (tp * tflops(gpu, weights) * COMPUTE_EFFICIENCY)
        + spec["input_tokens"] * allreduce
    )
    context = spec["input_tokens"] + spec["output_tokens"] // 2
    for batch in range(min(fit, MAX_BATCH), 0, -1):
        decode_tps = DECODE_EFFICIENCY * compute.decode_tokens_per_second_bound(
            config, gpu["bandwidth_gb_s"] * 1e9, batch, context, weights, kv, tp
        )
        step_s = batch / decode_tps + batch * allreduce  # one token for every sequence of the batch
        latency = prefill_s + spec["output_tokens"] * step_s
        if batch == 1:
            alone = {"latency_s": latency, "prefill_s": prefill_s, "tokens_per_s": 1 / step_s}
        if latency * 1000 <= spec["latency_p95_ms"]:
            return {
                "fits": True,
                "tp": tp,
                "batch": batch,
                "latency_s": latency,
                "prefill_s": prefill_s,
                "capacity_rps": 1 / (prefill_s + spec["output_tokens"] * step_s / batch),
            }
    return {"fits": True, "tp": tp, "too_slow": alone}


def llm_layout(config: dict, gpu: dict, spec: dict, host: dict) -> dict:
    """The tensor-parallel degree that gives an instance the most requests/s within the latency target.
    An instance of n GPUs runs n / tp groups side by side."""
    heads = compute.shape(config)["heads"]
    tried = [
        llm_capacity(config, gpu, spec, tp, link_bytes_s(host, gpu))
        for tp in TP_DEGREES
        if tp <= max(host["gpus"], 1) and heads % tp == 0
    ]
    usable = [c for c in tried if "capacity_rps" in c]
    for c in usable:
        c["groups"] = max(host["gpus"], 1) // c["tp"]
        c["instance_rps"] = c["capacity_rps"] * c["groups"]
    if usable:
        return max(usable, key=lambda c: c["instance_rps"])
    slow = [c for c in tried if c["fits"]]
    return min(slow, key=lambda c: c["too_slow"]["latency_s"]) if slow else tried[-1]


@functools.cache
def measured_cpu_embeddings_rps() -> float:
    """Best requests/s of this guide's embedding server on 2 CPU cores, from its benchmark."""
    measured = json.loads((REPO / "benchmarks" / "results" / "embedding_server.json").read_text())
    return max(
        r["requests_per_s"]
        for r in measured["server"]
        if r["mode"] == "batching on" and r["load"] == "closed"
    )


def encoder_capacity(config: dict, gpu: dict | None, spec: dict, host: dict) -> dict:
    """Encoders are compute-bound: FLOPs per request over the FLOP/s reached; on CPUs, measured.
    Each GPU of an instance serves its own copy of the (small) model."""
    if gpu is None:
        if spec["model"] != "all-minilm-l6-v2":
            return {"fits": False}
        rps = measured_cpu_embeddings_rps()
        return {
            "fits": True,
            "capacity_rps": rps,
            "instance_rps": rps,
            "latency_s": None,
            "measured": True,
        }
    flops = 2 * compute.parameter_count(config) * spec["input_tokens"]
    rps = min(gpu["bf16_tflops"] * 1e12 * COMPUTE_EFFICIENCY / flops, SERVING_CEILING_RPS)
    return {
        "fits": True,
        "capacity_rps": rps,
        "instance_rps": rps * host["gpus"],
        "latency_s": None,
        "measured": False,
    }


def too_slow(cap: dict, spec: dict) -> str:
    alone = cap["too_slow"]
    group = f" on {cap['tp']} GPUs" if cap["tp"] > 1 else ""
    return (
        f"too slow: estimated {alone['latency_s']:.1f} s per request even alone{group} (prefill "
        f"{alone['prefill_s']:.2f} s + {spec['output_tokens']} tokens at {alone['tokens_per_s']:.1f} tokens/s) "
        f"> p95 target {spec['latency_p95_ms'] / 1000:g} s"
    )


def does_not_fit(cap: dict, spec: dict, gpu: dict) -> str:
    weights, kv = dtypes(spec)
    per_gpu = cap["weights_per_gpu"] / 2**30
    group = f" each of {cap['tp']} GPUs" if cap["tp"] > 1 else ""
    return (
        f"does not fit: {per_gpu:.1f} GiB of {weights} weights on{group or ' the GPU'} plus the {kv} KV cache "
        f"of one request exceed {1 - MEMORY_RESERVE:.0%} of {usable_bytes(gpu) / 2**30:.1f} GiB"
    )


def evaluate(spec: dict, config: dict, host: dict, gpus: dict, n_params: int) -> dict:
    """One host: its capacity, replicas and monthly cost, or the reason it is out."""
    row = {"host": host}
    reason = rule_exclusion(spec, host)
    if reason:
        return {**row, "out": reason}
    gpu = gpus.get(host["gpu"]) if host["gpu"] else None
    is_llm = spec["use_case"] in ("chat", "generation")
    if gpu is None and (is_llm or n_params > 1e9):
        return {
            **row,
            "out": f"no accelerator: a {n_params / 1e9:.1f} B-parameter {spec['use_case']} model needs a GPU",
        }
    cap = (
        llm_layout(config, gpu, spec, host) if is_llm else encoder_capacity(config, gpu, spec, host)
    )
    if not cap["fits"]:
        return {
            **row,
            "out": does_not_fit(cap, spec, gpu)
            if gpu
            else "no CPU throughput measured for this model",
        }
    if "too_slow" in cap:
        return {**row, "out": too_slow(cap, spec)}
    row.update(cap)
    spare = 1 if spec["availability"] >= 0.999 else 0
    row["replicas"] = budget.replicas_needed(
        spec["peak_requests_per_second"], cap["instance_rps"], TARGET_UTILISATION, spare
    )
    row["price"] = price_for(spec, host)
    if row["price"] is None:
        return {**row, "uncosted": host.get("note") or "no price recorded for the regions allowed"}
    per_hour = row["price"]["per_hour"]
    if host["min_replicas"] is None:
        row["monthly"] = budget.always_on_monthly(per_hour, row["replicas"])
    else:
        traffic = budget.Traffic(
            spec["requests_per_day"], spec["peak_requests_per_second"], spec["peak_hours_per_day"]
        )
        row["monthly"] = budget.autoscaled_monthly(
            per_hour,
            traffic,
            row["replicas"],
            cap["instance_rps"],
            host["min_replicas"],
            TARGET_UTILISATION,
            cap.get("latency_s") or 0,
        )
    if row["monthly"] > spec["budget_per_month_usd"]:
        return {
            **row,
            "out": f"over budget: ${row['monthly']:,.0f} a month > ${spec['budget_per_month_usd']:,}",
        }
    return row


def evaluate_all(spec: dict) -> tuple[dict, list[dict]]:
    """The model's config and every host's row, in data/hosts.yaml order."""
    config = yaml.safe_load((DATA / "model_configs.yaml").read_text())["models"][spec["model"]][
        "config"
    ]
    gpus, n_params = load_gpus(), compute.parameter_count(config)
    return config, [evaluate(spec, config, host, gpus, n_params) for host in load_hosts()]


def price_cell(price: dict) -> str:
    """Where the price comes from, and whether it was re-checked."""
    checked = (
        f"re-checked {price['checked']}"
        if price["verified"]
        else f"**not re-checked** ({price['checked']})"
    )
    return f"${price['per_hour']:g}/h, {price['location']}; [as of {price['as_of'] or 'unknown'}]({price['source']}), {checked}"


def layout_cell(row: dict, host: dict, gpus: dict) -> str:
    """How one replica (one rented instance) uses its GPUs."""
    if not row.get("tp"):
        return (
            f"{host['gpus']} GPU{'s' if host['gpus'] > 1 else ''}" if host["gpus"] else "CPUs only"
        )
    link = gpus[host["gpu"]]["gpu_link"] if host["interconnect"] == "gpu-link" else "PCIe"
    group = f"tp={row['tp']} over {link}" if row["tp"] > 1 else "1 GPU"
    return f"{row['groups']} copies, {group} each" if row["groups"] > 1 else group


def interconnect_lines(config: dict, spec: dict, gpu: dict, row: dict) -> list[str]:
    """Why a tensor-parallel replica needs its GPU link: the all-reduce time of one decode step over that
    link and over PCIe, beside the time the step spends reading memory."""
    weights, kv = dtypes(spec)
    tp, batch = row["tp"], row["batch"]
    layout = compute.tensor_parallel_layout(config, tp, weights, kv)
    context = spec["input_tokens"] + spec["output_tokens"] // 2
    read_ms = (
        (layout["weights_per_gpu"] + batch * context * layout["kv_per_token_per_gpu"])
        / (gpu["bandwidth_gb_s"] * 1e9)
        * 1000
    )
    sent = batch * layout["allreduce_per_token"]
    sent_mb, pcie_ms = sent / 1e6, sent / (gpu["pcie_gb_s"] / 2 * 1e9) * 1000
    link_ms = sent / (gpu["gpu_link_gb_s"] / 2 * 1e9) * 1000 if gpu["gpu_link"] else None
    over_link = f"{link_ms:.1f} ms over {gpu['gpu_link']}, " if link_ms else ""
    return [
        "",
        (
            f"Each replica splits the model over {tp} GPUs (tensor parallel): "
            f"{layout['weights_per_gpu'] / 2**30:.1f} GiB of weights and "
            f"{layout['kv_per_token_per_gpu'] / 2**10:.0f} KiB of KV cache per token on each GPU. "
            f"At batch {batch} one decode step spends at least {read_ms:.1f} ms reading memory on each GPU "
            f"and all-reduces {sent_mb:.0f} MB through each GPU's link: {over_link}{pcie_ms:.1f} ms over "
            "PCIe. That is why the GPUs of a replica should share a GPU link."
        ),
    ]


def model_lines(spec: dict, config: dict, source: str, n_params: int) -> list[str]:
    weights, kv = dtypes(spec)
    is_llm = spec["use_case"] in ("chat", "generation")
    per_request = compute.kv_bytes_per_token(config, kv) * (
        spec["input_tokens"] + spec["output_tokens"]
    )
    kv_line = (
        f"KV cache in {kv}: {compute.kv_bytes_per_token(config, kv) / 2**10:.0f} KiB per token, "
        f"{per_request / 2**20:.0f} MiB per request at full length"
        if is_llm
        else "no KV cache (one forward pass per request)"
    )
    return [
        f"- **{spec['model']}**: {n_params / 1e9:.2f} B parameters (config: {source})",
        f"- weights in {weights}: {compute.weight_bytes(config, weights) / 2**30:.2f} GiB; {kv_line}",
        "- format: "
        + (
            FORMATS[weights] + "; served by an engine with continuous batching (vLLM or SGLang); "
            "check a quantized model on the quality bar before it ships"
            if is_llm
            else "safetensors (or ONNX for ONNX Runtime), served with dynamic batching"
        ),
    ]


def plan(spec_path: Path) -> str:
    spec = load_spec(spec_path, known_model_names())
    source = yaml.safe_load((DATA / "model_configs.yaml").read_text())["models"][spec["model"]][
        "source"
    ]
    api_prices = yaml.safe_load((DATA / "hosts.yaml").read_text())["api_prices"]
    config, rows = evaluate_all(spec)
    gpus = load_gpus()
    n_params = compute.parameter_count(config)
    kept = sorted(
        (r for r in rows if "monthly" in r and "out" not in r), key=lambda r: r["monthly"]
    )
    is_llm = spec["use_case"] in ("chat", "generation")

    lines = [
        f"# Plan: {spec['name']}",
        "",
        (
            f"Generated by `snippets/planning/plan.py` from `{spec_path.name}`. Prices and hardware figures come "
            "from `data/` with their sources and dates; throughput is an estimate until you measure it."
        ),
        "",
        "## Needs",
        "",
        (
            f"- {spec['use_case']}, {spec['requests_per_day']:,} requests a day, peak "
            f"{spec['peak_requests_per_second']:g}/s for {spec['peak_hours_per_day']:g} h a day"
        ),
        (
            f"- {spec['input_tokens']} input and {spec['output_tokens']} output tokens per request; "
            f"p95 latency target {spec['latency_p95_ms'] / 1000:g} s; availability {spec['availability']:.1%}"
        ),
        (
            f"- data: PII {'yes' if spec['privacy']['pii'] else 'no'}, residency "
            f"{', '.join(spec['privacy']['data_residency'])}, on-premises "
            f"{'required' if spec['privacy']['on_premises'] else 'not required'}; budget ${spec['budget_per_month_usd']:,} a month"
        ),
        f"- quality bar: {spec['quality_bar']}",
        "",
        "## Model and format",
        "",
        *model_lines(spec, config, source, n_params),
        "",
        "## Host shortlist",
        "",
    ]
    if kept:
        lines += [
            "| host | GPUs of a replica | replicas at peak | capacity per replica | monthly cost | per 1,000 requests | price |",
            "|---|---|---:|---:|---:|---:|---|",
        ]
        for r in kept:
            capacity = f"{r['instance_rps']:.2f} req/s" + (
                " (measured)" if r.get("measured") else ""
            )
            lines.append(
                f"| {r['host']['name']} | {layout_cell(r, r['host'], gpus)} | {r['replicas']} | {capacity} | "
                f"${r['monthly']:,.0f} | ${budget.per_request(r['monthly'], spec['requests_per_day']) * 1000:.3f} | "
                f"{price_cell(r['price'])} |"
            )
        best = kept[0]
        lines += [
            "",
            (
                f"**Recommendation: {best['host']['name']}**, {best['replicas']} replica(s), about "
                f"${best['monthly']:,.0f} a month."
            ),
        ]
        if best.get("tp", 1) > 1:
            lines += interconnect_lines(config, spec, gpus[best["host"]["gpu"]], best)
    else:
        lines.append(
            "**No costed host meets every rule and the budget.** See the exclusions and the hosts to price below."
        )
    uncosted = [r for r in rows if "uncosted" in r and "out" not in r]
    if uncosted:
        lines += ["", "To price yourself (no price recorded for this spec's regions):", ""]
        lines += [
            f"- {r['host']['name']}: {r['replicas']} replica(s) at {r['instance_rps']:.2f} req/s each; "
            f"{r['uncosted']}"
            for r in uncosted
        ]
    lines += ["", "## Excluded, and why", ""]
    lines += [f"- {r['host']['name']}: {r['out']}" for r in rows if "out" in r] or ["- none"]
    api = next(a for a in api_prices if ("embedding" in a["name"]) != is_llm)
    api_cost = budget.api_monthly(
        spec["requests_per_day"],
        spec["input_tokens"],
        spec["output_tokens"],
        api["input_per_million"],
        api["output_per_million"],
    )
    checked = "" if api["verified"] else ", **not re-checked**"
    lines += [
        "",
        "## Against a per-token API",
        "",
        (
            f"{api['name']} at ${api['input_per_million']} / ${api['output_per_million']} per 1M input / output "
            f"tokens ([as of {api['as_of']}]({api['source']}){checked}) would cost about ${api_cost:,.0f} a month "
            "for this traffic."
        ),
    ]
    if kept:
        even = budget.break_even_requests_per_day(
            kept[0]["monthly"],
            spec["input_tokens"],
            spec["output_tokens"],
            api["input_per_million"],
            api["output_per_million"],
        )
        lines.append(
            f"Self-hosting on the recommended host breaks even above about {math.ceil(even):,} requests a day "
            "(a different model: compare quality on your evaluation set too)."
        )
    lines += [
        "",
        "## Assumptions",
        "",
        (
            f"- engines reach {DECODE_EFFICIENCY:.0%} of the memory-bandwidth bound in decode and "
            f"{COMPUTE_EFFICIENCY:.0%} of data-sheet FLOP/s in prefill; batch at most {MAX_BATCH}; "
            f"{MEMORY_RESERVE:.0%} of each GPU's memory left to the runtime"
        ),
        (
            "- tensor-parallel all-reduces move at the one-way data-sheet bandwidth of the GPU link (or PCIe), "
            "latency not counted"
        ),
        f"- replicas sized for the peak at {TARGET_UTILISATION:.0%} utilisation"
        + (", plus one spare for the availability target" if spec["availability"] >= 0.999 else ""),
        (
            "- fixed fleets (VMs) are billed 730 hours a month for the peak's replicas; autoscaled hosts run "
            f"the peak's replicas for the {spec['peak_hours_per_day']:g} peak hours and the off-peak need, never "
            "below their minimum, for the rest of the day"
        ),
        (
            "- a host that scales to zero stays up while requests keep arriving within its idle timeout "
            f"({budget.IDLE_TIMEOUT_S // 60} minutes assumed); cold starts are not costed"
        ),
    ]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    parser = argparse.ArgumentParser(
        description="Turn a customer-needs spec into a costed deployment plan"
    )
    parser.add_argument("spec", type=Path, help="the spec, a YAML file")
    args = parser.parse_args()
    try:
        print(plan(args.spec), end="")
    except SpecError as error:
        sys.exit(str(error))
