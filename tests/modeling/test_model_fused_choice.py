import importlib.machinery
import sys
import types

import pytest
import torch
import torch.nn.functional as F

from interbert.modeling import layer_norm as layer_norm_module
from interbert.modeling.fused import (
    ApexProbe,
    apex_layer_norm,
    choose_apex_layer_norm,
    compare_with_torch,
    find_nvidia_apex,
    probe_nvidia_apex,
)
from interbert.modeling.layer_norm import layer_norm_implementation

ALL_DTYPES = (torch.float32, torch.float16, torch.bfloat16)
CPU = torch.device("cpu")


@pytest.fixture(autouse=True)
def fresh_apex_decision():
    probe_nvidia_apex.cache_clear()
    apex_layer_norm.cache_clear()
    yield
    probe_nvidia_apex.cache_clear()
    apex_layer_norm.cache_clear()


def right(x, weight, bias, shape, eps):
    """What Apex's fused_layer_norm_affine computes (fp32 inside, the input's dtype out)."""
    return F.layer_norm(x.float(), shape, weight.float(), bias.float(), eps).to(x.dtype)


def without_bias(x, weight, bias, shape, eps):
    return right(x, weight, torch.zeros_like(bias), shape, eps)


class _WrongBackward(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x):
        return x

    @staticmethod
    def backward(ctx, grad):
        return 2 * grad


def wrong_backward(x, weight, bias, shape, eps):
    return right(_WrongBackward.apply(x), weight, bias, shape, eps)


def no_kernel_image(x, weight, bias, shape, eps):
    raise RuntimeError("CUDA error: no kernel image is available for execution on the device")


def fake_apex(monkeypatch, kernel=right, extension=True):
    """An NVIDIA Apex module tree in sys.modules: apex, apex.normalization(.fused_layer_norm), and,
    with `extension`, its compiled fused_layer_norm_cuda."""
    apex = types.ModuleType("apex")
    apex.__spec__ = importlib.machinery.ModuleSpec("apex", None, is_package=True)
    normalization = types.ModuleType("apex.normalization")
    fused_layer_norm = types.ModuleType("apex.normalization.fused_layer_norm")
    fused_layer_norm.fused_layer_norm_affine = kernel
    normalization.fused_layer_norm = fused_layer_norm
    normalization.FusedLayerNorm = type("FusedLayerNorm", (torch.nn.Module,), {})
    apex.normalization = normalization
    for name, module in (("apex", apex), ("apex.normalization", normalization),
                         ("apex.normalization.fused_layer_norm", fused_layer_norm)):
        monkeypatch.setitem(sys.modules, name, module)
    if extension:
        monkeypatch.setitem(sys.modules, "fused_layer_norm_cuda", types.ModuleType("fused_layer_norm_cuda"))
    else:
        monkeypatch.delitem(sys.modules, "fused_layer_norm_cuda", raising=False)
    return normalization


def test_the_pypi_web_toolkit_named_apex_is_recognised_and_not_used(tmp_path, monkeypatch):
    package = tmp_path / "apex"
    package.mkdir()
    (package / "__init__.py").write_text('"""A web toolkit that happens to be called apex."""\n')
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.delitem(sys.modules, "apex", raising=False)
    probe = probe_nvidia_apex()
    assert not probe.available
    assert "not NVIDIA Apex" in probe.reason and str(package) in probe.reason
    assert "not NVIDIA Apex" in layer_norm_implementation("cuda")


def test_without_apex_layer_norm_is_torch_and_matches_the_reference():
    from interbert.modeling.layer_norm import layer_norm

    norm = layer_norm(16, 1e-12)
    x = torch.randn(3, 16)
    assert torch.allclose(norm(x), torch.nn.functional.layer_norm(x, (16,), eps=1e-12))
    assert layer_norm_implementation("cpu").startswith("torch.nn.functional.layer_norm")


def test_apex_without_its_cuda_extension_is_not_used_and_the_line_says_why(monkeypatch):
    fake_apex(monkeypatch, extension=False)
    probe = find_nvidia_apex()
    assert not probe.available
    assert "without its CUDA extension (fused_layer_norm_cuda: ModuleNotFoundError" in probe.reason
    assert "--cuda_ext" in probe.reason and "\n" not in probe.reason
    line = layer_norm_implementation("cuda")
    assert line.startswith("torch.nn.functional.layer_norm on CUDA (NVIDIA Apex is installed without its CUDA")


def test_apex_with_its_extension_is_checked_against_torch_on_the_device(monkeypatch):
    fake_apex(monkeypatch)
    probe = find_nvidia_apex()
    assert probe.available and probe.dtypes == ()  # found, not yet checked: not used
    checked = choose_apex_layer_norm(probe, CPU, ALL_DTYPES)
    assert checked.available and checked.dtypes == ALL_DTYPES
    assert checked.reason.endswith("agrees with torch on cpu in float32, float16, bfloat16")


@pytest.mark.parametrize("kernel, found", [
    (without_bias, "output in torch.float32 differs from torch.nn.functional.layer_norm"),
    (wrong_backward, "input gradient in torch.float32 differs"),
    (no_kernel_image, "RuntimeError: CUDA error: no kernel image is available"),
])
def test_an_apex_kernel_that_disagrees_with_torch_is_not_used(monkeypatch, kernel, found):
    fake_apex(monkeypatch, kernel)
    checked = choose_apex_layer_norm(find_nvidia_apex(), CPU, ALL_DTYPES)
    assert not checked.available and checked.dtypes == ()
    assert "failed the check on cpu against torch" in checked.reason and found in checked.reason


def test_the_check_takes_each_dtype_at_its_own_tolerance(monkeypatch):
    def half_rounding(x, weight, bias, shape, eps):  # a correct kernel that rounds through fp16
        return right(x, weight, bias, shape, eps).half().to(x.dtype)

    normalization = fake_apex(monkeypatch, half_rounding)
    assert compare_with_torch(normalization, CPU, torch.float16) is None
    assert "float32 differs" in compare_with_torch(normalization, CPU, torch.float32)


def test_the_start_line_names_the_kernel_the_check_chose(monkeypatch):
    normalization = fake_apex(monkeypatch)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert "no CUDA device here to check it on" in layer_norm_implementation("cuda")
    checked = ApexProbe(normalization, "NVIDIA Apex with its CUDA extension fused_layer_norm_cuda; agrees", ALL_DTYPES)
    monkeypatch.setattr(layer_norm_module, "apex_layer_norm", lambda device_type: checked)
    assert layer_norm_implementation("cuda").startswith("NVIDIA Apex FusedLayerNorm")
    assert layer_norm_implementation("cpu").startswith("torch.nn.functional.layer_norm on cpu")
