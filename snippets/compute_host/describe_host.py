"""Describe the machine a model would be served on: cores, memory, torch threads, accelerators.

Run it on a candidate host before sizing anything: the numbers in every benchmark depend on them,
and a torch that silently uses more threads than the host has cores loses most of its speed.

    python snippets/compute_host/describe_host.py
"""

import os
import platform

import torch


def describe_host() -> dict:
    """What this host offers for serving, as a flat dict."""
    page_size = os.sysconf("SC_PAGE_SIZE")
    return {
        "machine": platform.machine(),
        "cpu_cores_usable": len(os.sched_getaffinity(0)),
        "memory_gib": round(os.sysconf("SC_PHYS_PAGES") * page_size / 2**30, 1),
        "torch": torch.__version__,
        "torch_threads": torch.get_num_threads(),
        "cuda_gpus": [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())],
        "mps": torch.backends.mps.is_available(),
    }


if __name__ == "__main__":
    for key, value in describe_host().items():
        print(f"{key:>17}: {value}")
