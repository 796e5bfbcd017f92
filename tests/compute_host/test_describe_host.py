"""compute_host/describe_host.py: reports this machine as it is."""

import os

import torch
from helpers import load_snippet, run_snippet


def test_describe_host_matches_the_machine():
    info = load_snippet("compute_host/describe_host.py").describe_host()
    assert info["cpu_cores_usable"] == len(os.sched_getaffinity(0))
    assert info["memory_gib"] > 1
    assert info["cuda_gpus"] == [
        torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())
    ]
    out = run_snippet("compute_host/describe_host.py")
    assert f"cpu_cores_usable: {info['cpu_cores_usable']}" in out
    assert "torch_threads:" in out
