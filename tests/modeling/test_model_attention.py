import pytest
import torch

from interbert.modeling import InterBertModel
from interbert.modeling.attention import SelfAttentionScores


def outputs(model, batch):
    with torch.no_grad():
        out = model(**batch)
    return out


def test_sdpa_equals_eager_with_padding_in_both_modalities(small_config, batch_factory):
    model = InterBertModel(small_config).eval()
    batch = batch_factory(small_config, text_lengths=[7, 4, 2], region_counts=[5, 9, 3])
    sdpa = outputs(model, batch)
    model.set_attention_implementation("eager")
    eager = outputs(model, batch)
    for name in ("text_hidden", "image_hidden"):
        real = batch["text_mask"] if name == "text_hidden" else batch["region_mask"]
        assert torch.allclose(getattr(sdpa, name)[real], getattr(eager, name)[real], atol=1e-5)
    assert torch.allclose(sdpa.pooled_text, eager.pooled_text, atol=1e-5)
    assert torch.allclose(sdpa.pooled_image, eager.pooled_image, atol=1e-5)


@pytest.mark.parametrize("implementation", ["sdpa", "eager"])
def test_padding_does_not_change_real_positions(small_config, batch_factory, implementation):
    model = InterBertModel(small_config).eval()
    model.set_attention_implementation(implementation)
    tight = batch_factory(small_config, text_lengths=[6, 3], region_counts=[4, 7])
    padded = batch_factory(small_config, text_lengths=[6, 3], region_counts=[4, 7],
                           num_tokens=11, num_regions=12, seed=1)
    # same real content, different (and longer) junk padding
    for key, real in (("input_ids", "text_mask"), ("token_type_ids", "text_mask"),
                      ("region_features", "region_mask"), ("region_locations", "region_mask")):
        length = tight[key].shape[1]
        padded[key][:, :length][tight[real]] = tight[key][tight[real]]
    a, b = outputs(model, tight), outputs(model, padded)
    assert torch.allclose(a.text_hidden[tight["text_mask"]],
                          b.text_hidden[:, :6][tight["text_mask"]], atol=1e-5)
    assert torch.allclose(a.image_hidden[tight["region_mask"]],
                          b.image_hidden[:, :7][tight["region_mask"]], atol=1e-5)
    assert torch.allclose(a.pooled_image, b.pooled_image, atol=1e-5)


def test_eager_attention_ignores_masked_keys_even_when_huge():
    attention = SelfAttentionScores(8, type("S", (), {"num_attention_heads": 2,
                                                      "attention_probs_dropout_prob": 0.0})(), "eager")
    hidden = torch.randn(1, 4, 8)
    mask = torch.tensor([[True, True, False, False]])
    base = attention(hidden, mask)
    hidden[:, 2:] = 1e4  # junk in padded slots must not leak through the softmax
    assert torch.allclose(attention(hidden, mask)[:, :2], base[:, :2], atol=1e-5)


@pytest.mark.parametrize("implementation", ["sdpa", "eager"])
def test_bf16_forward_is_finite_and_close_to_fp32(small_config, batch_factory, implementation):
    model = InterBertModel(small_config).eval()
    model.set_attention_implementation(implementation)
    batch = batch_factory(small_config, text_lengths=[6, 3], region_counts=[4, 7])
    reference = outputs(model, batch).pooled_text
    half = outputs(model.to(torch.bfloat16), batch).pooled_text.float()
    assert torch.isfinite(half).all()
    assert (half - reference).abs().max() < 0.1 * reference.abs().max() + 0.05


@pytest.mark.parametrize("implementation", ["sdpa", "eager"])
def test_the_unpadded_paths_of_a_layer_equal_its_masked_forward(small_config, implementation):
    """Bucket scoring calls the same layer without a mask, with projections computed beforehand and
    with token 0 only; each must equal the ordinary masked forward over the same unpadded input."""
    from interbert.modeling.layers import TransformerLayer

    torch.manual_seed(0)
    layer = TransformerLayer(small_config.hidden_size, small_config.interaction, small_config.layer_norm_eps,
                             implementation).eval()
    hidden = torch.randn(3, 7, small_config.hidden_size)
    with torch.no_grad():
        masked = layer(hidden, torch.ones(3, 7, dtype=torch.bool))
        unmasked = layer(hidden, None)
        qkv = torch.nn.functional.linear(hidden, *layer.attention.self.fused_projection())
        projected = layer(hidden, None, qkv=qkv)
        first = layer(hidden, None, qkv=qkv, first_row_only=True)
    torch.testing.assert_close(unmasked, masked)
    torch.testing.assert_close(projected, masked)
    assert first.shape == (3, 1, small_config.hidden_size)
    torch.testing.assert_close(first[:, 0], masked[:, 0])
