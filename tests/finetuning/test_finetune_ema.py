"""EMA arithmetic, swapping, saving; the task losses on known logits."""
from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from interbert.finetuning.ema import ExponentialMovingAverage
from interbert.finetuning.model import match_logit, retrieval_loss


def _model(value: float) -> nn.Module:
    model = nn.Linear(2, 1)
    with torch.no_grad():
        model.weight.fill_(value)
        model.bias.fill_(value)
    return model


def test_ema_update_is_rate_times_shadow_plus_the_rest_times_weight():
    model = _model(1.0)
    ema = ExponentialMovingAverage(model, rate=0.9)
    with torch.no_grad():
        model.weight.fill_(3.0)
    ema.update(model)  # 0.9·1 + 0.1·3 = 1.2
    ema.update(model)  # 0.9·1.2 + 0.1·3 = 1.38
    assert torch.allclose(ema.shadow["weight"], torch.full((1, 2), 1.38))
    assert torch.allclose(ema.shadow["bias"], torch.ones(1))  # bias never moved
    assert ema.updates == 2


def test_ema_warmup_rate_grows_towards_the_configured_rate():
    ema = ExponentialMovingAverage(_model(0.0), rate=0.9999, warmup=True)
    assert ema.current_rate() == pytest.approx(1 / 10)
    ema.updates = 90
    assert ema.current_rate() == pytest.approx(91 / 100)
    assert ExponentialMovingAverage(_model(0.0), rate=0.9999).current_rate() == 0.9999


def test_swapped_in_puts_the_average_in_and_the_raw_weights_back(tmp_path):
    model = _model(1.0)
    ema = ExponentialMovingAverage(model, rate=0.5)
    with torch.no_grad():
        model.weight.fill_(5.0)
    ema.update(model)  # 3.0
    with ema.swapped_in(model):
        assert torch.allclose(model.weight, torch.full((1, 2), 3.0))
    assert torch.allclose(model.weight, torch.full((1, 2), 5.0))
    ema.save(tmp_path / "ema.safetensors")
    restored = ExponentialMovingAverage(_model(0.0), rate=0.5)
    restored.load(tmp_path / "ema.safetensors")
    assert restored.updates == 1 and torch.allclose(restored.shadow["weight"], ema.shadow["weight"])


def test_retrieval_losses_binary_per_pair_and_softmax_over_choices():
    # two questions, 4 choices; ITM logits [unmatched, matched]
    logits = torch.tensor([[0.0, 2.0], [0.0, 0.0], [1.0, 0.0], [0.0, 1.0],
                           [0.0, 0.0], [0.0, 3.0], [0.0, 0.0], [0.0, 0.0]])
    labels = torch.tensor([0, 0])
    scores = match_logit(logits).view(2, 4)
    assert scores.tolist() == [[2.0, 0.0, -1.0, 1.0], [0.0, 3.0, 0.0, 0.0]]
    softmax, _ = retrieval_loss(logits, 4, labels, "softmax")
    expected = -(torch.log_softmax(scores, -1)[:, 0]).mean()
    assert softmax.item() == pytest.approx(expected.item())
    binary, _ = retrieval_loss(logits, 4, labels, "binary")
    targets = torch.tensor([1, 0, 0, 0, 1, 0, 0, 0])
    expected = -torch.log_softmax(logits, -1)[torch.arange(8), targets].mean()
    assert binary.item() == pytest.approx(expected.item())
    assert not math.isclose(binary.item(), softmax.item())
