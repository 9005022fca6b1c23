"""Useful work per training batch, and the hardware peak it is compared with (MFU).

One training pass (forward + backward) of a stack of L post-LN layers of width h over T real
tokens costs 72·h²·L·T (the dense products: 4h² attention projections + 8h² feed-forward
weights, 2 FLOP per multiply-add, ×3 for forward and backward) + 12·L·h·T² (attention scores
and mixing). InterBERT has three stacks, each with its own T:
  interaction       T = real regions + real text tokens (one joint sequence)
  text extraction   T = real text tokens
  image extraction  T = real regions
Heads count 6 FLOP per weight per row they really see: region embeddings on every real
region, poolers once per pair, the MSM head on masked words only, the MRM head on masked
regions only. Padding is never counted (docs/training.md, "FLOPs and MFU").

The peak MFU is measured against: a table of dense vendor peaks per GPU part (fp16, bf16, TF32,
fp32), keyed by the name torch reports; a GPU not in it, and a CPU, get a measured matmul, and
`Peak.source` says which.
"""
from __future__ import annotations

import re
import time
from collections.abc import Callable
from dataclasses import dataclass

import torch

from interbert.batch_contract import IGNORE_INDEX
from interbert.config import InterBertConfig, StreamConfig

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


def stack_flops(stream: StreamConfig, hidden: int, tokens: torch.Tensor) -> float:
    """Training FLOPs of one stack over per-sample real token counts `tokens` (B,)."""
    tokens = tokens.double()
    layers = stream.num_layers
    dense = 72.0 * hidden * hidden * layers * tokens.sum()
    attention = 12.0 * layers * hidden * (tokens * tokens).sum()
    return float(dense + attention)


def head_flops(config: InterBertConfig, regions: torch.Tensor, masked_words: int,
               masked_regions: int, pairs: int) -> float:
    h = config.hidden_size
    region_embedding = (config.region_feature_size + config.region_location_size) * h
    msm = h * h + h * config.vocab_size  # transform + tied decoder
    mrm = h * h + h * config.num_region_classes
    poolers_and_itm = 2 * h * config.pooled_size + 2 * config.pooled_size * 2
    weights_times_rows = (region_embedding * float(regions.sum()) + msm * masked_words
                          + mrm * masked_regions + poolers_and_itm * pairs)
    return 6.0 * weights_times_rows


@dataclass
class BatchFlops:
    layers: float
    heads: float

    @property
    def total(self) -> float:
        return self.layers + self.heads


def batch_flops(config: InterBertConfig, batch: dict) -> BatchFlops:
    """FLOPs of one training pass over `batch` (the keys of docs/design.md), real tokens only."""
    text = batch["text_mask"].bool().sum(dim=1)
    regions = batch["region_mask"].bool().sum(dim=1)
    h = config.hidden_size
    layers = (stack_flops(config.interaction, h, text + regions)
              + stack_flops(config.text_extraction, h, text)
              + stack_flops(config.image_extraction, h, regions))
    masked_words = int((batch["msm_labels"] != IGNORE_INDEX).sum()) if "msm_labels" in batch else 0
    masked_regions = int((batch["mrm_labels"] != IGNORE_INDEX).sum()) if "mrm_labels" in batch else 0
    heads = head_flops(config, regions, masked_words, masked_regions, int(text.numel()))
    return BatchFlops(layers, heads)


def sample_flops(config: InterBertConfig, text_tokens: int, regions: int) -> BatchFlops:
    """FLOPs of one pair with the given real lengths and the default masking rates
    (about 15% of words and 10% of regions masked): for tables and estimates."""
    h = config.hidden_size
    one = lambda n: torch.tensor([n])  # noqa: E731
    layers = (stack_flops(config.interaction, h, one(text_tokens + regions))
              + stack_flops(config.text_extraction, h, one(text_tokens))
              + stack_flops(config.image_extraction, h, one(regions)))
    heads = head_flops(config, one(regions), round(0.15 * text_tokens), round(0.1 * regions), 1)
    return BatchFlops(layers, heads)


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
