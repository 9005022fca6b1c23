"""The one-pass CPU AdamW kernel (interbert/training/cpu_adamw.py, csrc/adamw_step.c) against
torch.optim.AdamW(fused=True) with the gradient multiplied first, as DeepSpeed's clipping does: the same
bits wherever torch's kernel is vectorized, a rounding apart in its scalar tail, the bf16 copy exactly
torch's rounding, the same bits on several threads, and a build that is cached, rebuilt when the source
changes, and refused with a reason when there is no compiler."""
from __future__ import annotations

import pytest
import torch

from interbert.training import cpu_adamw

BETAS = (0.9, 0.9999)


def _torch_reference(param, grads, multiplier, *, lr, betas, weight_decay, eps=1e-6):
    weights = param.clone().requires_grad_()
    optimizer = torch.optim.AdamW([weights], lr=lr, betas=betas, eps=eps, weight_decay=weight_decay, fused=True)
    for grad in grads:
        weights.grad = grad * torch.tensor(multiplier, dtype=torch.float32)  # DeepSpeed's clip: mul_ in fp32
        optimizer.step()
    state = optimizer.state[weights]
    return weights.detach(), state["exp_avg"], state["exp_avg_sq"]


def _ours(param, grads, multiplier, *, lr, betas, weight_decay, eps=1e-6):
    weights, exp_avg, exp_avg_sq = param.clone(), torch.zeros_like(param), torch.zeros_like(param)
    lp = torch.empty_like(param, dtype=torch.bfloat16)
    for step, grad in enumerate(grads, 1):
        cpu_adamw.adamw_step(weights, grad, exp_avg, exp_avg_sq, lp, step=step, lr=lr, beta1=betas[0],
                             beta2=betas[1], eps=eps, weight_decay=weight_decay, grad_multiplier=multiplier)
    return weights, exp_avg, exp_avg_sq, lp


@pytest.fixture
def one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # torch's kernel then has one range, and its scalar tail is the last elements
    yield
    torch.set_num_threads(threads)


@pytest.mark.parametrize("count", [4096, 100_003])
@pytest.mark.parametrize("weight_decay", [0.01, 0.0])
@pytest.mark.parametrize("betas", [BETAS, (0.3, 0.999)])  # 1 - beta1 >= 0.5 takes torch's other lerp form
def test_bit_identical_to_torch_fused_adamw(one_thread, count, weight_decay, betas):
    generator = torch.Generator().manual_seed(count)
    param = torch.randn(count, generator=generator)
    grads = [torch.randn(count, generator=generator) * 0.01 for _ in range(4)]
    expected = _torch_reference(param, grads, 0.37, lr=1e-3, betas=betas, weight_decay=weight_decay)
    got = _ours(param, grads, 0.37, lr=1e-3, betas=betas, weight_decay=weight_decay)
    body = count - count % 16  # torch's vectorized body (16 floats per AVX-512 vector, 8 per AVX2 one)
    for name, want, have in zip(("weights", "exp_avg", "exp_avg_sq"), expected, got):
        assert torch.equal(want[:body], have[:body]), name
        torch.testing.assert_close(have[body:], want[body:], rtol=1e-6, atol=0.0)  # rounding of the tail only
    assert not torch.equal(got[0], param)  # it trained
    assert torch.equal(got[3], got[0].to(torch.bfloat16))  # the bf16 copy: torch's round-to-nearest-even


def test_bf16_copy_rounds_as_torch_does_at_the_edges():
    values = torch.tensor([1.0, 1.00390625, 1.01171875, -2.5e-39, 3.3e38, 3.4e38, float("inf"), -float("inf"),
                           -0.0, 1e-45, float("nan")])
    values = torch.cat([values, torch.randn(1000) * 1e3])
    weights, zeros = values.clone(), torch.zeros_like(values)
    lp = torch.empty_like(values, dtype=torch.bfloat16)
    cpu_adamw.adamw_step(weights, zeros.clone(), zeros.clone(), zeros.clone(), lp, step=1, lr=0.0, beta1=0.9,
                         beta2=0.999, eps=1e-8, weight_decay=0.0)
    finite = ~values.isnan()
    assert torch.equal(lp[finite].view(torch.int16), values[finite].to(torch.bfloat16).view(torch.int16))
    assert lp[~finite].isnan().all()


def test_no_bf16_copy_and_threads_give_the_same_bits():
    generator = torch.Generator().manual_seed(3)
    count = 3 * cpu_adamw.CHUNK_ALIGNMENT * 4 + 17
    param = torch.randn(count, generator=generator)
    grad = torch.randn(count, generator=generator)
    results = []
    threads = torch.get_num_threads()
    try:
        for used, lp in ((1, True), (4, True), (1, False)):
            torch.set_num_threads(used)
            assert len(cpu_adamw._ranges(count)) == used
            weights, exp_avg, exp_avg_sq = param.clone(), torch.zeros(count), torch.zeros(count)
            copy = torch.empty(count, dtype=torch.bfloat16) if lp else None
            cpu_adamw.adamw_step(weights, grad, exp_avg, exp_avg_sq, copy, step=1, lr=1e-3, beta1=0.9, beta2=0.999,
                                 eps=1e-8, weight_decay=0.01, grad_multiplier=0.5)
            results.append((weights, exp_avg, exp_avg_sq))
    finally:
        torch.set_num_threads(threads)
    for other in results[1:]:
        assert all(torch.equal(a, b) for a, b in zip(results[0], other))


def test_an_empty_partition_is_a_no_op():
    empty = torch.zeros(0)
    cpu_adamw.adamw_step(empty, empty, empty, empty, torch.zeros(0, dtype=torch.bfloat16), step=1, lr=1e-3,
                         beta1=0.9, beta2=0.999, eps=1e-8, weight_decay=0.01)


def test_rejects_tensors_it_cannot_update_in_place():
    param = torch.zeros(64)
    with pytest.raises(ValueError, match="exp_avg: expected a contiguous torch.float32 CPU tensor of 64"):
        cpu_adamw.adamw_step(param, torch.zeros(64), torch.zeros(64, dtype=torch.float64), torch.zeros(64), None,
                             step=1, lr=1e-3, beta1=0.9, beta2=0.999, eps=1e-8, weight_decay=0.0)
    with pytest.raises(ValueError, match="grad: expected"):
        cpu_adamw.adamw_step(param, torch.zeros(128)[::2], torch.zeros(64), torch.zeros(64), None,
                             step=1, lr=1e-3, beta1=0.9, beta2=0.999, eps=1e-8, weight_decay=0.0)


@pytest.fixture
def fresh_build(tmp_path, monkeypatch):
    """An empty extensions cache and a module that has loaded nothing yet."""
    monkeypatch.setenv("TORCH_EXTENSIONS_DIR", str(tmp_path / "cache"))
    monkeypatch.setattr(cpu_adamw, "_library", None)
    monkeypatch.setattr(cpu_adamw, "_problem", None)
    return tmp_path


def test_build_is_cached_and_a_changed_source_builds_anew(fresh_build, monkeypatch):
    first = cpu_adamw.build()
    assert first.is_file() and first.parent == fresh_build / "cache" / cpu_adamw.BUILD_NAME
    stamp = first.stat().st_mtime_ns
    assert cpu_adamw.build() == first and first.stat().st_mtime_ns == stamp  # not compiled again
    changed = fresh_build / "adamw_step.c"
    changed.write_text(cpu_adamw.SOURCE.read_text() + "\n/* changed */\n")
    monkeypatch.setattr(cpu_adamw, "SOURCE", changed)
    second = cpu_adamw.build()
    assert second != first and second.is_file()
    assert not list(second.parent.glob(".building-*"))  # no half-written file left behind


def test_without_a_compiler_load_says_why(fresh_build, monkeypatch):
    monkeypatch.setenv("CC", str(fresh_build / "no-such-cc"))
    assert cpu_adamw.load() is None
    assert "could not compile adamw_step.c" in cpu_adamw.unavailable()
    with pytest.raises(RuntimeError, match="the CPU AdamW kernel is not available"):
        cpu_adamw.adamw_step(*(torch.zeros(16) for _ in range(4)), None, step=1, lr=1e-3, beta1=0.9, beta2=0.999,
                             eps=1e-8, weight_decay=0.0)
