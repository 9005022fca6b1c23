"""The pretraining model's fp32 outputs and gradients, pinned: a change made for speed (attention
paths, fused projections, gathers, dtype handling) must keep every output and every gradient within
1e-5 of the recorded ones (`fixtures/pinned_outputs_fp32.safetensors`, written by this file's
``--write`` from the model as it was when the pin was set).

  python -m tests.modeling.test_model_pinned_outputs --write   # only for a deliberate change of the math
"""
from __future__ import annotations

import argparse
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from interbert.config import InterBertConfig, StreamConfig
from interbert.modeling import InterBertForPretraining
from tests.modeling.conftest import make_batch

PINNED = Path(__file__).parent / "fixtures" / "pinned_outputs_fp32.safetensors"
TOLERANCE = 1e-5


def _config() -> InterBertConfig:
    """small_config's layout (distinct widths and head counts per stream), with the KL target."""
    return InterBertConfig(
        vocab_size=120, max_position_embeddings=40, region_feature_size=32, hidden_size=48,
        pooled_size=40, num_region_classes=11, mrm_loss="kl",
        interaction=StreamConfig(2, num_attention_heads=4, intermediate_size=96),
        text_extraction=StreamConfig(2, num_attention_heads=6, intermediate_size=80),
        image_extraction=StreamConfig(2, num_attention_heads=3, intermediate_size=64, hidden_dropout_prob=0.2),
    )


def compute() -> dict[str, torch.Tensor]:
    """Outputs, per-task losses and every parameter's gradient of one eval-mode step (no dropout) on
    a padded batch whose padding holds junk."""
    torch.manual_seed(0)
    config = _config()
    model = InterBertForPretraining(config).eval()
    batch = make_batch(config, text_lengths=[9, 5, 12], region_counts=[7, 10, 4], seed=3)
    generator = torch.Generator().manual_seed(4)
    words = (torch.rand(batch["input_ids"].shape, generator=generator) < 0.3) & batch["text_mask"]
    regions = (torch.rand(batch["region_mask"].shape, generator=generator) < 0.3) & batch["region_mask"]
    words[0, 2] = words[1, 4] = regions[0, 1] = regions[2, 3] = True  # every task has rows on matched pairs
    batch["msm_labels"] = batch["input_ids"].masked_fill(~words, -100)
    batch["mrm_labels"] = torch.randint(0, config.num_region_classes, regions.shape,
                                        generator=generator).masked_fill(~regions, -100)
    batch["mrm_soft_labels"] = torch.softmax(
        torch.randn(*regions.shape, config.num_region_classes, generator=generator), -1)
    batch["itm_labels"] = torch.tensor([1, 0, 1])
    output = model(**batch)
    assert output.loss is not None
    output.loss.backward()
    backbone = model.interbert(**{key: batch[key] for key in ("input_ids", "token_type_ids", "text_mask",
                                                               "region_features", "region_locations",
                                                               "region_mask")})
    values = {
        "loss": output.loss.detach(),
        "itm_logits": output.itm_logits.detach(),
        "text_hidden": backbone.text_hidden.detach() * batch["text_mask"][..., None],
        "image_hidden": backbone.image_hidden.detach() * batch["region_mask"][..., None],
        "pooled_text": backbone.pooled_text.detach(),
        "pooled_image": backbone.pooled_image.detach(),
    }
    values.update({f"loss_{name}": loss for name, loss in output.losses.items()})
    values.update({f"grad.{name}": p.grad for name, p in model.named_parameters() if p.grad is not None})
    return {name: value.contiguous() for name, value in values.items()}


def test_outputs_and_gradients_stay_within_1e_5_of_the_pinned_ones():
    pinned = load_file(PINNED)
    now = compute()
    assert sorted(now) == sorted(pinned), "the model's outputs or parameters changed names"
    worst = {name: float((now[name] - pinned[name]).abs().max()) for name in pinned}
    over = {name: difference for name, difference in worst.items() if difference > TOLERANCE}
    assert not over, f"beyond {TOLERANCE}: {over}"
    # the pin is not vacuous: the batch exercises every loss and every parameter gets a gradient
    assert {"loss_msm", "loss_mrm", "loss_itm"} <= set(pinned)
    assert all(float(pinned[name].abs().sum()) > 0 for name in pinned if name.startswith("grad."))


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--write", action="store_true", help=f"write {PINNED.name} from the model as it is now")
    if parser.parse_args().write:
        save_file(compute(), str(PINNED))
        print(f"wrote {PINNED}")
