"""The hardware peak that a run's FLOPs (`modeling/flops.py`) are compared with for MFU.

A table of dense vendor peaks per GPU part (fp16, bf16, TF32, fp32), keyed by the name torch
reports; a GPU not in it, and a CPU, get a measured matmul, and `Peak.source` says which.
"""
from __future__ import annotations

import re
import time
from collections.abc import Callable
from dataclasses import dataclass

import torch

TERA = 1e12


@dataclass(frozen=True)
class SkuPeaks:
    """Dense (no 2:4 sparsity) peaks of one GPU part in FLOP/s; None where it lacks the format."""
    part: str
    fp16: float  # tensor cores
    bf16: float | None  # tensor cores
    tf32: float | None  # tensor cores, fp32 matmuls with TF32 allowed
    fp32: float  # CUDA cores
    reference: str


# Sources: the vendor's datasheets; where a datasheet gives tensor-core figures "with sparsity"
# only, the dense figure is half of it. V100 has no bf16 or TF32 (bf16 on it is measured).
_V100 = "NVIDIA V100 datasheet, tensor-core fp16 (dense)"
_A100 = "NVIDIA A100 datasheet, dense"
_H100 = "NVIDIA H100 datasheet, sparse figures halved"
_H200 = "NVIDIA H200 datasheet, sparse figures halved"
_SXM5_DENSE = "dense figure of the NVIDIA Hopper architecture whitepaper (datasheet: 1,979 sparse)"
_H100_SXM = SkuPeaks("H100 SXM5", 989.4 * TERA, 989.4 * TERA, 494.7 * TERA, 66.9 * TERA, _SXM5_DENSE)
# (model token, form-factor tokens: any one of them, none = any name), in the order tried: the
# name torch reports is cut into upper-case tokens ("NVIDIA A100 80GB PCIe" -> NVIDIA, A100, 80GB,
# PCIE), so GH200 or a bare "NVIDIA H100" match nothing and are measured instead.
GPU_SKUS = (
    ("V100", ("SXM2",), SkuPeaks("V100 SXM2", 125 * TERA, None, None, 15.7 * TERA, _V100)),
    ("V100", ("PCIE",), SkuPeaks("V100 PCIe", 112 * TERA, None, None, 14 * TERA, _V100)),
    ("V100S", ("PCIE",), SkuPeaks("V100S PCIe", 130 * TERA, None, None, 16.4 * TERA, "NVIDIA V100S datasheet")),
    ("A100", ("SXM4", "SXM"), SkuPeaks("A100 SXM4", 312 * TERA, 312 * TERA, 156 * TERA, 19.5 * TERA, _A100)),
    ("A100", ("PCIE",), SkuPeaks("A100 PCIe", 312 * TERA, 312 * TERA, 156 * TERA, 19.5 * TERA, _A100)),
    ("H100", ("NVL",), SkuPeaks("H100 NVL", 835 * TERA, 835 * TERA, 417.5 * TERA, 60 * TERA,
                                 "NVIDIA H100 NVL datasheet (per GPU), sparse figures halved")),
    ("H100", ("PCIE",), SkuPeaks("H100 PCIe", 756 * TERA, 756 * TERA, 378 * TERA, 51 * TERA, _H100)),
    ("H100", ("HBM3", "SXM5", "SXM"), _H100_SXM),
    ("H200", ("NVL",), SkuPeaks("H200 NVL", 835 * TERA, 835 * TERA, 417.5 * TERA, 60 * TERA, _H200)),
    ("H200", (), SkuPeaks("H200 SXM", 989.4 * TERA, 989.4 * TERA, 494.7 * TERA, 66.9 * TERA,
                           "NVIDIA H200 datasheet (H100 SXM5 compute); " + _SXM5_DENSE)),
)


@dataclass(frozen=True)
class Peak:
    flops_per_second: float  # per device
    source: str


def sku_peaks(name: str) -> SkuPeaks | None:
    """The table's row for a device name as torch reports it, or None for a part it does not know."""
    tokens = set(re.split(r"[^A-Z0-9]+", name.upper()))
    for model, form_factors, peaks in GPU_SKUS:
        if model in tokens and (not form_factors or tokens.intersection(form_factors)):
            return peaks
    return None


def table_peak(name: str, dtype: torch.dtype, tf32: bool = False) -> Peak | None:
    """The dense peak of `name` in `dtype` from the table (fp32 counts TF32 tensor cores when
    `tf32`), or None when the part or the format is not in it."""
    peaks = sku_peaks(name)
    if peaks is None:
        return None
    fmt: str | None
    value: float | None
    if dtype == torch.float32:
        fmt, value = ("tf32", peaks.tf32) if tf32 and peaks.tf32 else ("fp32", peaks.fp32)
    else:
        fmt = {torch.float16: "fp16", torch.bfloat16: "bf16"}.get(dtype)
        value = getattr(peaks, fmt) if fmt else None
    if value is None:
        return None
    return Peak(value, f"{name}: {value / TERA:g} TFLOP/s dense {fmt} (table: {peaks.part}, {peaks.reference})")


def peak_for(name: str, dtype: torch.dtype, measure: Callable[[], Peak], tf32: bool = False) -> Peak:
    """The table's peak for `name`, else `measure()`, its source saying the part is not in the table."""
    peak = table_peak(name, dtype, tf32)
    if peak is not None:
        return peak
    measured = measure()
    return Peak(measured.flops_per_second, f"{name}: not in the peak table for {dtype}, measured: {measured.source}")


def device_peak(device: torch.device, dtype: torch.dtype) -> Peak:
    """The peak of one device: the SKU table for known GPUs, a large matmul measured on other GPUs,
    a measured matmul on a CPU."""
    if device.type != "cuda":
        return measured_matmul_peak(device, dtype)
    return peak_for(torch.cuda.get_device_name(device), dtype,
                    lambda: measured_matmul_peak(device, dtype, size=8192),
                    tf32=torch.backends.cuda.matmul.allow_tf32)


def measured_matmul_peak(device: torch.device, dtype: torch.dtype, size: int = 1024,
                         repeats: int = 8) -> Peak:
    """Best FLOP/s of a square matmul in `dtype`: what this device really sustains on the
    kind of work the model does (run on every rank at once, so shared cores are shared)."""
    a = torch.randn(size, size, device=device, dtype=dtype)
    b = torch.randn(size, size, device=device, dtype=dtype)
    a @ b  # warm-up
    best = float("inf")
    for _ in range(repeats):
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        start = time.perf_counter()
        a @ b
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        best = min(best, time.perf_counter() - start)
    peak = 2.0 * size ** 3 / best
    return Peak(peak, f"{device.type} {dtype}: {peak / 1e9:.1f} GFLOP/s measured by a "
                      f"{size}x{size} matmul")
