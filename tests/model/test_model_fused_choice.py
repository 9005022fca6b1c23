import sys

import torch

from interbert.modeling.fused import probe_nvidia_apex
from interbert.modeling.layer_norm import layer_norm_implementation


def test_the_pypi_web_toolkit_named_apex_is_recognised_and_not_used(tmp_path, monkeypatch):
    package = tmp_path / "apex"
    package.mkdir()
    (package / "__init__.py").write_text('"""A web toolkit that happens to be called apex."""\n')
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.delitem(sys.modules, "apex", raising=False)
    probe_nvidia_apex.cache_clear()
    try:
        probe = probe_nvidia_apex()
        assert not probe.available
        assert "not NVIDIA Apex" in probe.reason and str(package) in probe.reason
        assert "not NVIDIA Apex" in layer_norm_implementation("cuda")
    finally:
        probe_nvidia_apex.cache_clear()


def test_without_apex_layer_norm_is_torch_and_matches_the_reference():
    from interbert.modeling.layer_norm import layer_norm

    norm = layer_norm(16, 1e-12)
    x = torch.randn(3, 16)
    assert torch.allclose(norm(x), torch.nn.functional.layer_norm(x, (16,), eps=1e-12))
    assert layer_norm_implementation("cpu").startswith("torch.nn.functional.layer_norm")
