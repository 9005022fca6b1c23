"""What a GPU node decides at start, fed what such a node would report (runs on a CPU): the card
against this torch build and the precision (device_check), and where AdamW comes from (FusedAdam,
prebuilt or JIT-built, or torch's fused AdamW)."""
from __future__ import annotations

import json

import pytest
import torch

from interbert.errors import UsageError
from interbert.training.device_check import CudaDevice, check_cuda_device, runs_on
from interbert.training.extensions import build_cuda_ops
from interbert.training.optimizer import CudaToolchain, adapt_to_device, cuda_versions_agree, plan_cuda_adam
from interbert.training.precision import resolve_precision
from tests.helpers.training_runs import REPO

CU126_ARCHES = ("sm_50", "sm_60", "sm_70", "sm_75", "sm_80", "sm_86", "sm_90")
CU128_ARCHES = ("sm_75", "sm_80", "sm_86", "sm_90", "sm_100", "sm_120", "compute_120")
V100 = "Tesla V100-SXM2-32GB"
DS_MINORS = {12: ["12.0", "12.1", "12.2", "12.4", "12.6", "12.8"], 11: ["11.7", "11.8"]}


# ---------------------------------------------------------------- the card and the precision
def test_a_v100_runs_fp16_with_a_wheel_that_carries_sm_70():
    line = check_cuda_device((7, 0), CU126_ARCHES, V100, "fp16", "v100.json")
    assert line == f"{V100}, compute capability 7.0 (sm_70 in this torch build)"


def test_a_v100_with_a_wheel_without_sm_70_names_the_card_the_arches_and_what_to_install():
    with pytest.raises(UsageError) as error:
        check_cuda_device((7, 0), CU128_ARCHES, V100, "fp16", "v100.json", torch_cuda="12.8")
    message = str(error.value)
    assert "cannot run this torch build (CUDA 12.8), which carries only" in message
    assert "\n" not in message and V100 in message and "compute capability 7.0" in message
    assert " ".join(CU128_ARCHES) in message and "sm_70" in message and "cu126" in message


def test_which_arch_entries_run_on_a_card():
    assert runs_on((8, 6), ("sm_80",)) == "sm_80"  # machine code runs on later minors of its major
    assert runs_on((8, 0), ("sm_86",)) is None
    assert runs_on((9, 0), ("sm_80",)) is None  # ... never across majors
    assert runs_on((9, 0), ("sm_80", "compute_80")) == "compute_80"  # PTX compiles for newer cards
    assert runs_on((7, 0), ("compute_80",)) is None
    assert runs_on((9, 0), ("sm_90a",)) == "sm_90a" and runs_on((9, 1), ("sm_90a",)) is None


def test_bf16_from_the_config_on_a_v100_names_the_file_and_the_key():
    with pytest.raises(UsageError, match=r"^v100\.json: bf16\.enabled asks for bf16, but Tesla V100.*capability "
                                         r"7\.0.*set bf16\.enabled to false and fp16\.enabled to true in v100\.json"):
        check_cuda_device((7, 0), CU126_ARCHES, V100, "bf16", "v100.json")
    with pytest.raises(UsageError, match=r"^--precision bf16 asks for bf16.*pass --precision fp16"):
        check_cuda_device((7, 0), CU126_ARCHES, V100, "bf16", "v100.json", "--precision bf16")
    assert check_cuda_device((8, 0), CU126_ARCHES, "NVIDIA A100-SXM4-40GB", "bf16",
                             "a100.json").startswith("NVIDIA A100")


def test_resolve_precision_checks_the_card_on_cuda_only():
    v100 = CudaDevice(V100, (7, 0), CU126_ARCHES, "12.6")
    config = {"fp16": {"enabled": True}}
    choice = resolve_precision("auto", config, torch.device("cuda", 0), "v100.json", cuda_device=v100)
    assert choice.name == "fp16" and choice.reason.endswith(f"; {V100}, compute capability 7.0 (sm_70 in this "
                                                            "torch build)")
    with pytest.raises(UsageError, match=r"v100\.json: bf16\.enabled"):
        resolve_precision("auto", {"bf16": {"enabled": True}}, torch.device("cuda", 0), "v100.json", cuda_device=v100)
    with pytest.raises(UsageError, match="--precision bf16"):
        resolve_precision("bf16", {}, torch.device("cuda", 0), "v100.json", cuda_device=v100)
    with pytest.raises(UsageError, match="cannot run this torch build"):
        resolve_precision("auto", {}, torch.device("cuda", 0), "v100.json",
                          cuda_device=CudaDevice(V100, (7, 0), CU128_ARCHES, "12.8"))
    # a CPU is never checked as a card; CUDA without a card to ask (this machine) is left as configured
    assert resolve_precision("auto", {}, torch.device("cpu"), "v100.json", cuda_device=v100).name == "fp32"
    assert resolve_precision("auto", {"fp16": {"enabled": True}}, torch.device("cuda"), "v100.json").name == "fp16"


# ---------------------------------------------------------------- where AdamW comes from
def toolchain(**reported) -> CudaToolchain:
    return CudaToolchain(**{"torch_cuda": "12.6", "minor_mismatch_ok": DS_MINORS, **reported})


def v100_config() -> dict:
    return json.loads((REPO / "ds_configs" / "pretrain_v100x8.json").read_text())


def never_built():
    raise AssertionError("nothing is built on this path")


def test_without_nvcc_a_cuda_run_uses_torchs_fused_adamw_through_deepspeed():
    config = v100_config()
    note = adapt_to_device(config, "cuda", toolchain=toolchain(), build=never_built)
    assert config["optimizer"]["params"]["torch_adam"] is True and config["optimizer"]["params"]["fused"] is True
    assert note.startswith("optimizer: DeepSpeed's FusedAdam cannot be built here (no nvcc")
    assert note.endswith("the config's AdamW runs as torch.optim.AdamW(fused=True) (torch_adam)")
    assert "\n" not in note
    on_path = plan_cuda_adam(toolchain(nvcc_on_path="/opt/cuda-12.6/bin/nvcc")).note
    assert "set CUDA_HOME=/opt/cuda-12.6" in on_path


def test_an_nvcc_of_another_cuda_major_is_not_used():
    config = v100_config()
    note = adapt_to_device(config, "cuda", toolchain=toolchain(nvcc="/usr/local/cuda/bin/nvcc", nvcc_release="11.8"),
                           build=never_built)
    assert config["optimizer"]["params"]["torch_adam"] is True
    assert "/usr/local/cuda/bin/nvcc is CUDA 11.8 but torch was built with CUDA 12.6" in note


def test_cuda_versions_agree_as_deepspeed_decides():
    assert cuda_versions_agree("12.4", "12.6", DS_MINORS) and cuda_versions_agree("13.0", "13.0", DS_MINORS)
    assert not cuda_versions_agree("11.8", "12.6", DS_MINORS)
    assert not cuda_versions_agree("13.1", "13.0", DS_MINORS)  # a minor pair DeepSpeed does not accept


def test_a_prebuilt_fused_adam_is_used_and_nothing_is_compiled():
    config = v100_config()
    note = adapt_to_device(config, "cuda", toolchain=toolchain(prebuilt=True), build=never_built)
    assert note == "optimizer: DeepSpeed's FusedAdam, prebuilt (deepspeed.ops.adam.fused_adam_op)"
    assert "torch_adam" not in config["optimizer"]["params"] and "fused" not in config["optimizer"]["params"]


def test_a_matching_nvcc_builds_fused_adam_at_start_and_a_failing_compiler_falls_back():
    built = []
    nvcc = dict(nvcc="/usr/local/cuda/bin/nvcc", nvcc_release="12.4")
    config = v100_config()
    note = adapt_to_device(config, "cuda", toolchain=toolchain(**nvcc), build=lambda: built.append(1))
    assert built == [1] and "torch_adam" not in config["optimizer"]["params"]
    assert note.startswith("optimizer: DeepSpeed's FusedAdam, JIT-built with /usr/local/cuda/bin/nvcc (CUDA 12.4; "
                           "torch's CUDA 12.6)")
    cached = plan_cuda_adam(toolchain(**nvcc, cached="/cache/fused_adam/fused_adam.so")).note
    assert "already built in /cache/fused_adam/fused_adam.so" in cached
    assert "ninja is not installed" in plan_cuda_adam(toolchain(**nvcc, ninja=False)).note

    def failing():
        raise RuntimeError("Error building extension 'fused_adam'\nlong compiler output")

    config = v100_config()
    note = adapt_to_device(config, "cuda", toolchain=toolchain(**nvcc), build=failing)
    assert config["optimizer"]["params"]["torch_adam"] is True and config["optimizer"]["params"]["fused"] is True
    assert "did not build with /usr/local/cuda/bin/nvcc (RuntimeError: Error building extension 'fused_adam')" in note
    assert "\n" not in note


def test_what_cuda_leaves_to_deepspeed():
    offloaded = {"optimizer": {"type": "AdamW", "params": {}},
                 "zero_optimization": {"stage": 1, "offload_optimizer": {"device": "cpu"}}}
    assert adapt_to_device(offloaded, "cuda", toolchain=toolchain(), build=never_built) is None
    chosen = {"optimizer": {"type": "AdamW", "params": {"torch_adam": True}}}
    assert adapt_to_device(chosen, "cuda", toolchain=toolchain(), build=never_built) is None
    assert "fused" not in chosen["optimizer"]["params"]
    cpu_torch = v100_config()
    assert adapt_to_device(cpu_torch, "cuda", toolchain=CudaToolchain(None), build=never_built) is None
    adam = {"optimizer": {"type": "Adam", "params": {"adam_w_mode": False}}}
    assert "torch.optim.Adam(fused=True)" in adapt_to_device(adam, "cuda", toolchain=toolchain(), build=never_built)


def test_the_set_up_step_builds_fused_adam_only_where_it_can_and_says_why_not():
    said, built = [], []
    assert build_cuda_ops(said.append, toolchain(), build=never_built) == []
    assert said[-1].startswith("FusedAdam: not built (no nvcc") and "torch.optim.AdamW(fused=True)" in said[-1]
    assert build_cuda_ops(said.append, toolchain(prebuilt=True), build=never_built) == []
    assert "prebuilt into DeepSpeed" in said[-1]
    nvcc = toolchain(nvcc="/usr/local/cuda/bin/nvcc", nvcc_release="12.6")
    assert build_cuda_ops(said.append, nvcc, build=lambda: built.append(1)) == ["FusedAdam"] and built == [1]
    assert said[-1].startswith("FusedAdam: ready (") and "nvcc 12.6 at /usr/local/cuda/bin/nvcc" in said[-1]

    def failing():
        raise RuntimeError("Error building extension 'fused_adam'")

    assert build_cuda_ops(said.append, nvcc, build=failing) == [] and "failed (RuntimeError" in said[-1]


def test_the_probe_finds_nvcc_where_deepspeed_looks_and_reads_its_release(tmp_path, monkeypatch):
    """CUDA_HOME/bin/nvcc, as torch's cpp_extension found it; a fake nvcc answers like CUDA 12.4's."""
    import torch.utils.cpp_extension as cpp_extension

    from interbert.training.optimizer import probe_cuda_toolchain

    nvcc = tmp_path / "cuda" / "bin" / "nvcc"
    nvcc.parent.mkdir(parents=True)
    nvcc.write_text("#!/bin/sh\necho 'Cuda compilation tools, release 12.4, V12.4.131'\n")
    nvcc.chmod(0o755)
    monkeypatch.setattr(torch.version, "cuda", "12.6")
    monkeypatch.setattr(cpp_extension, "CUDA_HOME", str(tmp_path / "cuda"))
    monkeypatch.setenv("TORCH_EXTENSIONS_DIR", str(tmp_path / "extensions"))
    found = probe_cuda_toolchain()
    assert (found.torch_cuda, found.nvcc, found.nvcc_release, found.cached) == ("12.6", str(nvcc), "12.4", None)
    assert not found.prebuilt and "12.6" in found.minor_mismatch_ok[12]
    (tmp_path / "extensions" / "fused_adam").mkdir(parents=True)
    (tmp_path / "extensions" / "fused_adam" / "fused_adam.so").write_bytes(b"")
    monkeypatch.setattr(cpp_extension, "CUDA_HOME", None)
    monkeypatch.setenv("PATH", f"{nvcc.parent}:/usr/bin:/bin")
    found = probe_cuda_toolchain()
    assert found.nvcc is None and found.nvcc_on_path == str(nvcc)
    assert found.cached == str(tmp_path / "extensions" / "fused_adam" / "fused_adam.so")


def test_deepspeed_hands_torch_adam_s_other_params_to_torch_adamw_and_the_start_line_says_fused():
    """The route the fallback relies on (DeepSpeed 0.19's get_optimizer_configuration), and what
    describe_optimizer prints for the optimizer it builds."""
    from types import SimpleNamespace

    from deepspeed.runtime.engine import DeepSpeedEngine

    from interbert.training.optimizer import describe_optimizer

    params = {"lr": 1e-4, "weight_decay": 0.01, "torch_adam": True, "fused": True}
    config = v100_config()
    adapt_to_device(config, "cuda", toolchain=toolchain(), build=never_built)
    assert {key: config["optimizer"]["params"][key] for key in ("torch_adam", "fused")} == {"torch_adam": True,
                                                                                           "fused": True}
    cls, extra = DeepSpeedEngine.get_optimizer_configuration(None, params, True)
    optimizer = cls([torch.nn.Parameter(torch.ones(2))], **params, **extra)  # fused AdamW runs on a CPU too
    assert type(optimizer) is torch.optim.AdamW and optimizer.defaults["fused"] is True
    engine = SimpleNamespace(basic_optimizer=optimizer, optimizer=optimizer, optimizer_name=lambda: "adamw")
    assert describe_optimizer(engine) == "torch.optim.AdamW, built by DeepSpeed from optimizer.type adamw (fused)"
