"""The SKU peak table of interbert/training/peaks.py: each device name torch reports maps to its
part's dense vendor peak per format; a name or format the table lacks is measured, and says so."""
import pytest
import torch

from interbert.training.peaks import Peak, device_peak, peak_for, sku_peaks, table_peak

T = 1e12
HALF = [  # name as torch.cuda.get_device_name reports it, part, dense fp16/bf16 TFLOP/s
    ("Tesla V100-SXM2-16GB", "V100 SXM2", 125),
    ("Tesla V100-SXM2-32GB", "V100 SXM2", 125),
    ("Tesla V100-PCIE-16GB", "V100 PCIe", 112),
    ("NVIDIA A100-SXM4-80GB", "A100 SXM4", 312),
    ("NVIDIA A100-SXM4-40GB", "A100 SXM4", 312),
    ("NVIDIA A100-PCIE-40GB", "A100 PCIe", 312),
    ("NVIDIA A100 80GB PCIe", "A100 PCIe", 312),
    ("NVIDIA H100 80GB HBM3", "H100 SXM5", 989.4),
    ("NVIDIA H100 PCIe", "H100 PCIe", 756),
    ("NVIDIA H100 NVL", "H100 NVL", 835),
    ("NVIDIA H200", "H200 SXM", 989.4),
    ("NVIDIA H200 NVL", "H200 NVL", 835),
]


@pytest.mark.parametrize("name,part,tflops", HALF)
def test_each_known_name_gets_its_parts_dense_fp16_peak(name, part, tflops):
    assert sku_peaks(name).part == part
    peak = table_peak(name, torch.float16)
    assert peak.flops_per_second == pytest.approx(tflops * T)
    assert peak.source.startswith(f"{name}: ") and "dense fp16" in peak.source and part in peak.source
    assert "datasheet" in peak.source


@pytest.mark.parametrize("name,part,tflops", [row for row in HALF if "V100" not in row[0]])
def test_bf16_equals_fp16_on_ampere_and_hopper(name, part, tflops):
    assert table_peak(name, torch.bfloat16).flops_per_second == pytest.approx(tflops * T)


@pytest.mark.parametrize("name,fp32,tf32", [
    ("Tesla V100-SXM2-16GB", 15.7, None), ("Tesla V100-PCIE-16GB", 14, None),
    ("NVIDIA A100-SXM4-80GB", 19.5, 156), ("NVIDIA A100 80GB PCIe", 19.5, 156),
    ("NVIDIA H100 80GB HBM3", 66.9, 494.7), ("NVIDIA H100 PCIe", 51, 378), ("NVIDIA H100 NVL", 60, 417.5),
    ("NVIDIA H200", 66.9, 494.7), ("NVIDIA H200 NVL", 60, 417.5),
])
def test_fp32_is_the_cuda_core_peak_unless_tf32_is_allowed(name, fp32, tf32):
    assert table_peak(name, torch.float32).flops_per_second == pytest.approx(fp32 * T)
    with_tf32 = table_peak(name, torch.float32, tf32=True)
    assert with_tf32.flops_per_second == pytest.approx((tf32 or fp32) * T)
    assert ("dense tf32" if tf32 else "dense fp32") in with_tf32.source


def test_h100_pcie_is_not_read_as_the_sxm_part():
    assert table_peak("NVIDIA H100 PCIe", torch.bfloat16).flops_per_second == pytest.approx(756 * T)


@pytest.mark.parametrize("name", ["NVIDIA GeForce RTX 4090", "NVIDIA H100", "NVIDIA GH200 480GB", "Tesla T4", ""])
def test_an_unknown_name_is_measured_and_says_so(name):
    assert sku_peaks(name) is None and table_peak(name, torch.float16) is None
    peak = peak_for(name, torch.float16, lambda: Peak(42e12, "42.0 TFLOP/s measured by a 8192x8192 matmul"))
    assert peak.flops_per_second == 42e12
    assert "not in the peak table" in peak.source and "measured" in peak.source


def test_a_format_the_part_lacks_is_measured():
    assert table_peak("Tesla V100-SXM2-16GB", torch.bfloat16) is None
    peak = peak_for("Tesla V100-SXM2-16GB", torch.bfloat16, lambda: Peak(1e12, "measured"))
    assert peak.flops_per_second == 1e12 and "not in the peak table" in peak.source


def test_a_known_name_never_measures():
    def measure():
        raise AssertionError("measured although the table knows the part")
    assert peak_for("NVIDIA H100 PCIe", torch.float16, measure).flops_per_second == pytest.approx(756 * T)


def test_on_a_cpu_the_peak_is_a_measured_matmul():
    peak = device_peak(torch.device("cpu"), torch.float32)
    assert peak.flops_per_second > 0 and "measured" in peak.source
