"""Benchmark rows: one long-format CSV for every benchmark (kernel, provider, metric, unit,
median, p20, p80), each row carrying the device, versions and git SHA it was measured with."""

from __future__ import annotations

import csv
import datetime
import os
from dataclasses import asdict, dataclass

import torch

from .._environment import device_name, git_sha, versions
from ..backends import cpu_backend, extension


@dataclass
class Row:
    """One long-format CSV row (a measurement of one metric)."""

    timestamp: str
    git_sha: str
    device: str
    fastadv: str
    torch: str
    triton: str
    cuda: str
    python: str
    kernel: str
    provider: str
    dtype: str
    size: str
    numel: int
    metric: str
    unit: str
    median: float
    p20: float
    p80: float


def environment(device: torch.device) -> dict[str, str]:
    """The Row fields that describe where and with what a run was measured. On a CPU the device
    names the build of the CPU loop in use too ("..., avx2 build"; FASTADV_CPU_ISA)."""
    now = datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds")
    return {"timestamp": now, "git_sha": git_sha(), "device": _device_and_build(device), **versions()}


def _device_and_build(device: torch.device) -> str:
    name = device_name(device)
    if device.type != "cpu" or extension.load_error() is not None:
        return name
    build = f"{cpu_backend.cpu_isa()} build"  # raises, naming FASTADV_CPU_ISA, when it is bad
    return name[:-1] + f", {build})" if name.endswith(")") else f"{name} ({build})"


def write_csv(rows: list[Row], path: str) -> None:
    """Appends rows to a long-format CSV (header written once)."""
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    new = not os.path.exists(path) or os.path.getsize(path) == 0
    with open(path, "a", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(Row.__dataclass_fields__))
        if new:
            writer.writeheader()
        writer.writerows(asdict(r) for r in rows)


def medians_by_case(rows: list[Row]) -> dict[tuple, dict[str, float]]:
    """{(kernel, size, numel, provider): {metric: median}}, in the order the rows came."""
    by_key: dict[tuple, dict[str, float]] = {}
    for r in rows:
        by_key.setdefault((r.kernel, r.size, r.numel, r.provider), {})[r.metric] = r.median
    return by_key
