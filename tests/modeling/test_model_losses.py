import pytest
import torch

from interbert.config import InterBertConfig
from interbert.modeling import InterBertForPretraining


def labelled(config, batch, itm=(1, 1)):
    batch = dict(batch)
    batch["msm_labels"] = torch.full(batch["input_ids"].shape, -100)
    batch["mrm_labels"] = torch.full(batch["region_mask"].shape, -100)
    batch["mrm_soft_labels"] = torch.softmax(
        torch.randn(*batch["region_mask"].shape, config.num_region_classes,
                    generator=torch.Generator().manual_seed(3)), -1)
    batch["itm_labels"] = torch.tensor(itm)
    batch["msm_labels"][0, 2] = 17
    batch["mrm_labels"][1, 3] = 4
    return batch


@pytest.fixture
def model(small_config):
    torch.manual_seed(0)
    return InterBertForPretraining(small_config).eval()


@pytest.fixture
def batch(small_config, batch_factory):
    return labelled(small_config, batch_factory(small_config, [6, 5], [5, 6]))


def test_the_target_at_a_masked_position_changes_the_msm_loss(model, batch):
    base = model(**batch)
    changed = dict(batch, msm_labels=batch["msm_labels"].clone())
    changed["msm_labels"][0, 2] = 18
    assert model(**changed).losses["msm"] != base.losses["msm"]
    assert base.counts["msm"] == 1


def test_an_unmasked_position_gets_no_msm_gradient(model, batch):
    captured = {}
    hook = model.interbert.text_extraction.register_forward_hook(
        lambda module, args, output: captured.setdefault("hidden", output.retain_grad() or output))
    out = model(**{**batch, "mrm_labels": None, "itm_labels": None})
    hook.remove()
    out.loss.backward()
    grad = captured["hidden"].grad
    assert grad[0, 2].abs().sum() > 0
    others = torch.ones_like(grad[..., 0], dtype=torch.bool)
    others[0, 2] = False
    assert grad[others].abs().sum() == 0


def test_lambda_weights_act_as_weights(small_config, batch):
    torch.manual_seed(0)
    plain = InterBertForPretraining(small_config).eval()
    weighted_config = InterBertConfig.from_dict({**small_config.to_dict(),
                                                 "msm_weight": 2.0, "mrm_weight": 0.5, "itm_weight": 0.0})
    weighted = InterBertForPretraining(weighted_config).eval()
    weighted.load_state_dict(plain.state_dict())
    out, out_w = plain(**batch), weighted(**batch)
    assert torch.allclose(out.loss, sum(out.losses.values()))
    expected = 2.0 * out.losses["msm"] + 0.5 * out.losses["mrm"]
    assert torch.allclose(out_w.loss, expected)


def test_mrm_counts_only_matched_pairs_as_released(model, batch):
    assert model(**batch).counts["mrm"] == 1
    mismatched = dict(batch, itm_labels=torch.tensor([1, 0]))
    assert model(**mismatched).counts["mrm"] == 0
    assert model(**mismatched).losses["mrm"] == 0


def test_mrm_on_all_pairs_when_configured(small_config, batch):
    config = InterBertConfig.from_dict({**small_config.to_dict(), "mrm_matched_only": False})
    model = InterBertForPretraining(config).eval()
    assert model(**dict(batch, itm_labels=torch.tensor([1, 0]))).counts["mrm"] == 1


def test_mrm_kl_variant_needs_class_distributions(model, batch):
    with pytest.raises(ValueError, match="no mrm_soft_labels"):
        model(**dict(batch, mrm_soft_labels=None))


def test_mrm_kl_equals_the_hand_computed_divergence(model, batch):
    out = model(**batch)
    hidden = model.interbert(**{k: batch[k] for k in ("input_ids", "token_type_ids", "text_mask",
                                                     "region_features", "region_locations",
                                                     "region_mask")}).image_hidden
    log_q = torch.log_softmax(model.mrm_head(hidden[1, 3:4]), -1)
    p = batch["mrm_soft_labels"][1, 3:4]
    assert torch.allclose(out.losses["mrm"], (p * (p.log() - log_q)).sum(), atol=1e-5)


def test_itm_score_is_the_matched_class_probability(model, batch):
    out = model(**batch)
    assert torch.allclose(model.itm_score(**batch), out.itm_logits.softmax(-1)[:, 1])
    target = torch.tensor([1, 1])
    assert torch.allclose(out.losses["itm"], torch.nn.functional.cross_entropy(out.itm_logits, target))


def test_an_empty_masked_set_gives_zero_loss_and_still_backpropagates(model, batch):
    empty = dict(batch, msm_labels=torch.full_like(batch["msm_labels"], -100))
    out = model(**empty)
    assert out.losses["msm"] == 0 and out.counts["msm"] == 0
    assert torch.isnan(out.accuracies["msm"])
    out.loss.backward()
    assert model.msm_head.transform.dense.weight.grad is not None


@pytest.mark.parametrize("loss_kind", ["ce", "kl"])
def test_positions_from_the_data_path_give_the_same_losses_and_gradients(small_config, batch, loss_kind):
    """The heads gather rows by index; positions passed in equal the ones derived from the labels."""
    from interbert.batch_contract import loss_positions

    config = InterBertConfig.from_dict({**small_config.to_dict(), "mrm_loss": loss_kind})
    torch.manual_seed(0)
    model = InterBertForPretraining(config).eval()
    batch = dict(batch, itm_labels=torch.tensor([1, 0]))
    batch["mrm_labels"][0, 1] = 2  # a target on the matched pair, besides the one on the mismatched pair
    given = dict(batch, msm_positions=loss_positions(batch["msm_labels"]),
                 mrm_positions=loss_positions(batch["mrm_labels"], batch["itm_labels"] == 1))
    outputs, grads = [], []
    for inputs in (batch, given):
        model.zero_grad()
        output = model(**inputs)
        output.loss.backward()
        outputs.append(output)
        grads.append(torch.cat([p.grad.flatten() for p in model.parameters() if p.grad is not None]))
    assert outputs[0].counts == outputs[1].counts == {"msm": 1, "mrm": 1, "itm": 2}
    for name in ("msm", "mrm", "itm"):
        assert torch.equal(outputs[0].losses[name], outputs[1].losses[name])
    assert torch.equal(grads[0], grads[1])
