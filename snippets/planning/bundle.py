"""Write a plan's deployment bundle: the vLLM command the plan assumed, Kubernetes manifests for
self-managed GPUs, and alerting rules on vLLM's metrics with the spec's targets.

    python snippets/planning/plan.py data/specs/internal-chat.yaml --write bundle/

- serve.sh: `vllm serve` with the recommended host's settings; any host runs it, a managed
  endpoint's custom container included. The API key comes from VLLM_API_KEY in the environment,
  which vLLM reads itself, so it never appears on a command line.
- kubernetes.yaml: a Deployment, a Service and a KEDA ScaledObject for the plan's cheapest
  feasible host with NVIDIA GPUs that you run yourself (a GPU VM or on premises), one pod per
  tensor-parallel group. The Deployment's command is built by the same function as serve.sh.
- alert_rules.yml: Prometheus rules on vLLM's own metric names, thresholds from the spec.
- README.md: which host each file is for, what is not pinned, and how to apply it.
"""

import json
import math
import re
import shlex
import sys
from pathlib import Path

import yaml

sys.path.insert(0, str(Path(__file__).parent))
import compute
import plan as planner
from hosts import load_gpus

VLLM_IMAGE = "vllm/vllm-openai:v0.32.0"  # the release whose argument parser the guide's tests run
NVIDIA = ("Ampere", "Ada Lovelace", "Hopper", "Blackwell")  # data/gpus.yaml architectures
SELF_MANAGED = ("gpu-cloud", "on-premises")  # data/hosts.yaml kinds where you run the cluster
PORT = 8000
PRESTOP_S = 10  # time for the Service and load balancers to stop sending a terminating pod requests
TEARDOWN_S = 15  # after the drain: vLLM frees the GPUs and exits
DOWNLOAD_BYTES_S = 100e6  # a first start downloads the weights (assumption: 100 MB/s)
WARMUP_S = 600  # torch.compile and CUDA-graph capture on a first start (assumption)
JOB = "vllm"  # the Prometheus job that scrapes the pods
# vLLM 0.32's default bucket bounds (vllm/v1/metrics/buckets.py); the spec's targets are added.
# fmt: off
VLLM_BUCKETS = {
    "request_latency": [0.3, 0.5, 0.8, 1, 1.5, 2, 2.5, 5, 10, 15, 20, 30, 40, 50, 60, 120, 240,
                        480, 960, 1920, 7680],
    "time_to_first_token": [0.001, 0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.25, 0.5, 0.75, 1,
                            2.5, 5, 7.5, 10, 20, 40, 80, 160, 640, 2560],
}
# fmt: on


class BundleError(ValueError):
    """A plan the bundle cannot be written for, or a folder it cannot be written to; one line."""


def model_to_serve(engine: dict, source: str) -> str:
    """What `vllm serve` loads: a Hub id (the checkpoint the plan chose), the folder of a local
    config.json, or the Hub repository a recorded config.json was read from."""
    if engine["model"].endswith("config.json"):
        return str(Path(engine["model"]).parent)
    if re.fullmatch(r"[\w.-]+/[\w.-]+", engine["model"]):
        return engine["model"]
    named = re.search(r"config\.json of ([\w.-]+/[\w.-]+)", source)
    if named:
        return named.group(1)
    raise BundleError(f"no Hub id or folder is recorded for the model ({source})")


def revision(source: str) -> str | None:
    """The commit a recorded config.json address pins, if it pins one (…/blob/<commit>/…)."""
    found = re.search(r"/(?:blob|resolve|tree)/([0-9a-f]{40})/", source)
    return found.group(1) if found else None


def served_name(spec: dict) -> str:
    """The name clients send as `model`: the spec's model name (a config path: its folder's name)."""
    return Path(spec["model"]).parent.name if spec["model"].endswith(".json") else spec["model"]


# --8<-- [start:command]
def shutdown_timeout_s(spec: dict) -> int:
    """--shutdown-timeout: twice the p95 latency target, so a request that was still waiting for a
    slot at SIGTERM finishes too. vLLM's default, 0, aborts every request in flight."""
    return math.ceil(2 * spec["latency_p95_ms"] / 1000)


def histogram_buckets(spec: dict) -> dict[str, list[float]]:
    """--custom-histogram-buckets: vLLM's default bounds plus each latency target, so the p95 an
    alert compares with its target is exact rather than interpolated inside a wide bucket."""
    targets = {"request_latency": spec["latency_p95_ms"] / 1000}
    if "ttft_p95_ms" in spec:
        targets["time_to_first_token"] = spec["ttft_p95_ms"] / 1000
    return {
        family: [int(b) if b == int(b) else b for b in sorted({*VLLM_BUCKETS[family], target})]
        for family, target in targets.items()
    }


def vllm_argv(plan: dict, engine: dict) -> list[str]:
    """`vllm serve` with the settings the plan assumed for one host (engine: see make_plan)."""
    spec, llm = plan["spec"], planner.is_llm(plan["spec"])
    argv = ["vllm", "serve", model_to_serve(engine, plan["model"]["source"])]
    argv += ["--served-model-name", served_name(spec)]
    pinned = revision(plan["model"]["source"])
    argv += ["--revision", pinned] if pinned and not plan["format"].checkpoint else []
    argv += [] if llm else ["--runner", "pooling"]
    argv += ["--dtype", "bfloat16", "--tensor-parallel-size", str(engine["tensor_parallel_size"])]
    if llm:
        argv += ["--max-model-len", str(engine["max_model_len"])]
        argv += ["--max-num-seqs", str(engine["max_num_seqs"])]
        argv += ["--max-num-batched-tokens", str(engine["max_num_batched_tokens"])]
        argv += ["--gpu-memory-utilization", str(engine["gpu_memory_utilization"])]
    argv += ["--quantization", engine["quantization"]] if engine["quantization"] else []
    argv += ["--kv-cache-dtype", "fp8"] if engine["kv_cache_dtype"] == "fp8" else []
    argv += ["--shutdown-timeout", str(shutdown_timeout_s(spec))]
    buckets = json.dumps(histogram_buckets(spec), separators=(",", ":"))
    return argv + ["--custom-histogram-buckets", buckets]


def serve_script(argv: list[str], host: str) -> str:
    """serve.sh: the command, one flag a line; `exec` hands SIGTERM to vLLM itself."""
    words = [shlex.quote(w) for w in argv]
    lines, i = [" ".join(words[:3])], 3
    while i < len(words):  # a flag and its value share a line
        takes_value = i + 1 < len(words) and not words[i + 1].startswith("--")
        lines.append(" ".join(words[i : i + 1 + takes_value]))
        i += 1 + takes_value
    return (
        f"#!/bin/sh\n# vLLM for {host}, written by snippets/planning/plan.py --write.\n"
        "# Set VLLM_API_KEY (clients send it as their API key) and, for a gated model, HF_TOKEN.\n"
        "exec " + " \\\n  ".join(lines) + "\n"
    )


# --8<-- [end:command]


def kubernetes_row(plan: dict) -> tuple[dict, str]:
    """The row the manifests are for, and why: the cheapest feasible host with NVIDIA GPUs that you
    run yourself; if the plan has none, the recommended host's GPU layout on your own nodes."""
    gpus = load_gpus()

    def nvidia(row: dict) -> bool:
        return bool(row["host"]["gpu"]) and gpus[row["host"]["gpu"]]["architecture"] in NVIDIA

    for row in plan["kept"] + plan["uncosted"]:  # priced rows cheapest first, then unpriced
        if row["host"]["kind"] in SELF_MANAGED and nvidia(row):
            return row, "the plan's cheapest feasible host with NVIDIA GPUs that you run yourself"
    if nvidia(plan["chosen"]):
        return plan["chosen"], (
            "no host you run yourself is feasible in the plan: these manifests give your own "
            "nodes the recommended host's GPUs and settings"
        )
    raise BundleError(f"no feasible host with NVIDIA GPUs in the plan for {plan['spec']['name']}")


# --8<-- [start:drain]
def grace_period_s(spec: dict) -> int:
    """terminationGracePeriodSeconds: the preStop delay, then vLLM's drain, then its teardown.
    Kubernetes kills the pod when it runs out, drained or not."""
    return PRESTOP_S + shutdown_timeout_s(spec) + TEARDOWN_S


def startup_failures(plan: dict) -> int:
    """startupProbe failureThreshold at one probe per 10 s: long enough for a first start that
    downloads the weights and compiles; liveness and readiness probes wait for it to pass."""
    weights = compute.weight_bytes(plan["model"]["config"], plan["format"].weights)
    return math.ceil((weights / DOWNLOAD_BYTES_S + WARMUP_S) / 10)


# --8<-- [end:drain]


# --8<-- [start:deployment]
def deployment(plan: dict, engine: dict, name: str) -> dict:
    """The Deployment: one pod per tensor-parallel group, its args the command of vllm_argv."""
    argv, tp = vllm_argv(plan, engine), engine["tensor_parallel_size"]
    weights = compute.weight_bytes(plan["model"]["config"], plan["format"].weights)
    health = {"httpGet": {"path": "/health", "port": "http"}}
    secret = {"name": f"{name}-secrets"}
    container = {
        "name": "vllm",
        "image": VLLM_IMAGE,
        "command": argv[:2],
        "args": argv[2:],
        "ports": [{"name": "http", "containerPort": PORT}],
        "env": [
            {"name": "VLLM_API_KEY", "valueFrom": {"secretKeyRef": {**secret, "key": "api-key"}}},
            {
                "name": "HF_TOKEN",  # only gated models need it
                "valueFrom": {"secretKeyRef": {**secret, "key": "hf-token", "optional": True}},
            },
            {"name": "HF_HOME", "value": "/models"},
        ],
        "resources": {"limits": {"nvidia.com/gpu": tp}},
        "startupProbe": {**health, "periodSeconds": 10, "failureThreshold": startup_failures(plan)},
        "readinessProbe": {**health, "periodSeconds": 5, "failureThreshold": 3},
        "livenessProbe": {
            **health,
            "periodSeconds": 10,
            "timeoutSeconds": 5,
            "failureThreshold": 3,
        },
        "lifecycle": {"preStop": {"exec": {"command": ["sleep", str(PRESTOP_S)]}}},
        "volumeMounts": [
            {"name": "models", "mountPath": "/models"},
            {"name": "shm", "mountPath": "/dev/shm"},
        ],
    }
    volumes = [  # the weights, cached per pod; shared memory for the tensor-parallel workers
        {"name": "models", "emptyDir": {"sizeLimit": f"{math.ceil(weights * 1.25 / 2**30)}Gi"}},
        {"name": "shm", "emptyDir": {"medium": "Memory", "sizeLimit": f"{max(2, tp)}Gi"}},
    ]
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": name, "labels": {"app": name}},
        "spec": {  # no replicas: the ScaledObject owns the count
            "selector": {"matchLabels": {"app": name}},
            "template": {
                "metadata": {"labels": {"app": name}},
                "spec": {
                    "terminationGracePeriodSeconds": grace_period_s(plan["spec"]),
                    "tolerations": [
                        {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}
                    ],
                    "containers": [container],
                    "volumes": volumes,
                },
            },
        },
    }


# --8<-- [end:deployment]


def service(name: str) -> dict:
    """The Service in front of the pods: their named port, inside the cluster."""
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {"name": name, "labels": {"app": name}},
        "spec": {
            "selector": {"app": name},
            "ports": [{"name": "http", "port": PORT, "targetPort": "http"}],
        },
    }


# --8<-- [start:scaling]
def waiting_per_replica(spec: dict, row: dict) -> int:
    """KEDA's target of waiting requests per replica. Slots free at max-num-seqs per request
    latency, so a request behind W others waits about W x latency / max-num-seqs; W is the most
    that keeps this wait within what the TTFT target (else the latency target) leaves."""
    if "batch" not in row:  # the pooling runner: nothing to derive, scale on any queue
        return 1
    if "ttft_p95_ms" in spec:
        left = spec["ttft_p95_ms"] / 1000 - row["prefill_step_s"]
    else:
        left = spec["latency_p95_ms"] / 1000 - row["latency_s"]
    return max(1, math.floor(row["batch"] * left / row["latency_s"]))


def scaled_object(plan: dict, row: dict, name: str, prometheus: str) -> dict:
    """Scale on vLLM's queue: one replica, plus the spare the availability target needs, up to
    the replicas the plan costed. Scale-down is slow, since an empty queue cannot say how many
    replicas the load needs."""
    pods_per_instance = max(row["host"]["gpus"], 1) // row.get("tp", 1)
    query = (
        f'sum(vllm:num_requests_waiting{{job="{JOB}",model_name="{served_name(plan["spec"])}"}})'
    )
    return {
        "apiVersion": "keda.sh/v1alpha1",
        "kind": "ScaledObject",
        "metadata": {"name": name, "labels": {"app": name}},
        "spec": {
            "scaleTargetRef": {"name": name},
            "minReplicaCount": 1 + row["spare"],
            "maxReplicaCount": row["replicas"] * pods_per_instance,
            "pollingInterval": 15,
            "advanced": {
                "horizontalPodAutoscalerConfig": {
                    "behavior": {
                        "scaleDown": {
                            "stabilizationWindowSeconds": 900,
                            "policies": [{"type": "Pods", "value": 1, "periodSeconds": 600}],
                        }
                    }
                }
            },
            "triggers": [
                {
                    "type": "prometheus",
                    "metadata": {
                        "serverAddress": prometheus,
                        "query": query,
                        "threshold": str(waiting_per_replica(plan["spec"], row)),
                    },
                }
            ],
        },
    }


# --8<-- [end:scaling]


def alert(name: str, expr: str, wait: str, severity: str, summary: str, check: str) -> dict:
    """One Prometheus alerting rule; `check` says what to look at first."""
    return {
        "alert": name,
        "expr": expr,
        "for": wait,
        "labels": {"severity": severity},
        "annotations": {"summary": summary, "description": check},
    }


def p95_above(histogram: str, target_s: float) -> str:
    """PromQL: the p95 of a vLLM histogram over 5 minutes, per model, above a target."""
    return (
        f"histogram_quantile(0.95,\n  sum by (job, model_name, le) "
        f'(rate({histogram}_bucket{{job="{JOB}"}}[5m]))) > {target_s:g}\n'
    )


# --8<-- [start:alerts]
def alert_rules(spec: dict) -> dict:
    """Alerting rules on vLLM's metric names: down, failing, stuck, slower than the spec's targets,
    queueing, and (for an LLM) out of KV cache."""
    v1 = f'job="{JOB}", handler=~"/v1/.*"'
    budget = round(1 - spec["availability"], 6)
    rules = [
        alert(
            "VLLMDown",
            f'up{{job="{JOB}"}} == 0 or absent(up{{job="{JOB}"}})',
            "1m",
            "critical",
            "vLLM cannot be scraped{{ with $labels.instance }} on {{ . }}{{ end }}",
            "Check first: the pod's events and its last log lines; a pod still loading the model "
            "answers /health only when the startup probe has passed.",
        ),
        alert(
            "VLLMHighErrorRate",
            f'sum by (job) (rate(http_requests_total{{{v1}, status="5xx"}}[5m]))\n'
            f"  / sum by (job) (rate(http_requests_total{{{v1}}}[5m])) > {budget:g}\n"
            f"and sum by (job) (rate(http_requests_total{{{v1}}}[5m])) > 0.1\n",
            "5m",
            "critical",
            "{{ $value | humanizePercentage }} of vLLM's API requests fail with 5xx",
            f"More than the {spec['availability']:.1%} availability target allows. Check first: "
            "the server log for the failing requests' error, then the pods' restarts.",
        ),
        alert(
            "VLLMNoRequestsFinishing",
            f"sum by (job) (rate(http_requests_total{{{v1}}}[5m])) > 0\n"
            f'unless sum by (job) (rate(vllm:request_success_total{{job="{JOB}", '
            f'finished_reason!~"abort|error"}}[5m])) > 0\n',
            "5m",
            "critical",
            "vLLM receives requests but finishes none",
            "The engine is stuck while the HTTP server still answers. Check first: the engine "
            "core's log and GPU errors (nvidia-smi, Xid messages); restart the pod.",
        ),
    ]
    if "ttft_p95_ms" in spec:
        rules.append(
            alert(
                "VLLMTimeToFirstTokenP95High",
                p95_above("vllm:time_to_first_token_seconds", spec["ttft_p95_ms"] / 1000),
                "10m",
                "warning",
                "vLLM's p95 time to first token is {{ $value | humanizeDuration }}",
                f"Above the spec's {spec['ttft_p95_ms'] / 1000:g} s target. Check first: waiting "
                "requests (not enough replicas) and the prompt lengths (long prefills).",
            )
        )
    rules += [
        alert(
            "VLLMRequestLatencyP95High",
            p95_above("vllm:e2e_request_latency_seconds", spec["latency_p95_ms"] / 1000),
            "10m",
            "warning",
            "vLLM's p95 request latency is {{ $value | humanizeDuration }}",
            f"Above the spec's {spec['latency_p95_ms'] / 1000:g} s target. Check first: waiting "
            "requests, then the output lengths and the running batch (bigger steps are slower).",
        ),
        alert(
            "VLLMRequestsWaiting",
            f'min_over_time(vllm:num_requests_waiting{{job="{JOB}"}}[5m]) > 0\n',
            "10m",
            "warning",
            "Requests have waited for a slot on {{ $labels.instance }} for 15 minutes",
            "The autoscaler has not added capacity. Check first: the ScaledObject (at "
            "maxReplicaCount?) and pods stuck Pending for want of a GPU.",
        ),
    ]
    if planner.is_llm(spec):
        rules += [
            alert(
                "VLLMKVCacheFull",
                f'max by (job, instance) (vllm:kv_cache_usage_perc{{job="{JOB}"}}) > 0.9\n'
                f'and on (job, instance) max by (job, instance) (vllm:num_requests_waiting{{job="{JOB}"}}) > 0\n',
                "10m",
                "warning",
                "Requests wait on {{ $labels.instance }} because the KV cache is full",
                "Slots are free but memory is not. Check first: the prompt and output lengths "
                "against the spec's; a smaller --max-model-len or an FP8 KV cache holds more.",
            ),
            alert(
                "VLLMPreempting",
                f'sum by (job, instance) (rate(vllm:num_preemptions_total{{job="{JOB}"}}[5m])) > 0\n',
                "10m",
                "warning",
                "vLLM on {{ $labels.instance }} preempts running requests",
                "The KV cache cannot hold the running batch, so requests are evicted and "
                "recomputed. Check first: vllm:kv_cache_usage_perc; lower --max-num-seqs.",
            ),
        ]
    return {"groups": [{"name": "vllm", "rules": rules}]}


# --8<-- [end:alerts]


class _Literal(yaml.SafeDumper):
    """YAML with multi-line strings (PromQL) as literal blocks, and no anchors for repeated parts."""

    def ignore_aliases(self, data) -> bool:
        return True


_Literal.add_representer(
    str,
    lambda dumper, text: dumper.represent_scalar(
        "tag:yaml.org,2002:str", text, style="|" if "\n" in text else None
    ),
)


def to_yaml(*documents: dict) -> str:
    """Documents as one YAML stream, keys in the order written."""
    return "---\n".join(
        yaml.dump(d, Dumper=_Literal, sort_keys=False, width=100) for d in documents
    )


def rules_file(spec: dict, spec_path: Path) -> str:
    """alert_rules.yml: the rules under a header that says where they come from."""
    header = (
        f"# Alerting rules for vLLM serving {spec['name']} ({Path(spec_path).name}), written by\n"
        "# snippets/planning/plan.py --write: thresholds from the spec, metric names vLLM 0.32\n"
        f'# exports. Scrape the pods under the job name "{JOB}".\n'
    )
    return header + to_yaml(alert_rules(spec))


def app_name(spec_path: Path) -> str:
    """A Kubernetes name from the spec's file name: lower case, letters, digits and dashes."""
    stem = re.sub(r"[^a-z0-9-]+", "-", Path(spec_path).stem.lower()).strip("-")
    return f"{stem[:50]}-vllm"


def readme(plan: dict, row: dict, why: str, name: str) -> str:
    """README.md: which host each file is for, what is not pinned, how to apply it."""
    spec, chosen = plan["spec"], plan["chosen"]["host"]["name"]
    pinned = revision(plan["model"]["source"])
    revision_line = (
        f"The model revision is pinned to {pinned}."
        if pinned
        else "The model revision is not pinned: the plan read the model's config.json from its "
        "main branch. Add `--revision <commit>` once you have checked that commit."
    )
    if plan["engine"]["model"].endswith("config.json"):
        revision_line += (
            " The model is a local folder: mount it in the pods at the same path, or push it to "
            "a model hub and serve it from there."
        )
    return f"""# Deployment bundle: {spec["name"]}

Written by `snippets/planning/plan.py --write`; the plan itself is what `plan.py` prints.

- `serve.sh`: vLLM with the settings the plan assumed for the recommended host, {chosen}.
- `kubernetes.yaml`: a Deployment, a Service and a KEDA ScaledObject for {row["host"]["name"]}:
  {why}. Image `{VLLM_IMAGE}`.
- `alert_rules.yml`: Prometheus alerting rules with the spec's targets.

{revision_line}

Create the secret the pods read, then apply:

    kubectl create secret generic {name}-secrets --from-literal=api-key=... --from-literal=hf-token=...
    kubectl apply -f kubernetes.yaml

The ScaledObject needs KEDA and a Prometheus that scrapes the pods' /metrics under the job name
`{JOB}`; set its `serverAddress` to your Prometheus. The model cache is an emptyDir: each new pod
downloads the weights again; use a PersistentVolumeClaim your nodes share to keep them.
"""


def bundle_files(spec_path: Path, prometheus: str = "http://prometheus.monitoring:9090") -> dict:
    """File name -> text of the bundle for one spec. Raises SpecError, PlanError or BundleError."""
    plan = planner.make_plan(spec_path)
    row, why = kubernetes_row(plan)
    engine = planner.engine_settings(plan["spec"], plan["model"], plan["format"], row)
    name = app_name(spec_path)
    manifests = [
        deployment(plan, engine, name),
        service(name),
        scaled_object(plan, row, name, prometheus),
    ]
    return {
        "serve.sh": serve_script(vllm_argv(plan, plan["engine"]), plan["engine"]["host"]),
        "kubernetes.yaml": to_yaml(*manifests),
        "alert_rules.yml": rules_file(plan["spec"], spec_path),
        "README.md": readme(plan, row, why, name),
    }


def write(spec_path: Path, folder: Path) -> list[Path]:
    """Write the bundle into `folder` (created if need be); the paths written."""
    files = bundle_files(spec_path)
    try:
        folder.mkdir(parents=True, exist_ok=True)
        for file, text in files.items():
            (folder / file).write_text(text)
        (folder / "serve.sh").chmod(0o755)
    except OSError as error:
        raise BundleError(f"{folder}: cannot write the bundle: {error.strerror}") from None
    return [folder / file for file in files]
