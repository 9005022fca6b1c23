import pytest
import torch
from transformers import BertModel

from interbert.config import InterBertConfig, StreamConfig
from interbert.modeling import InterBertForPretraining, InterBertModel


def minilm_layout(interaction: int, text_extraction: int) -> InterBertConfig:
    stream = dict(num_attention_heads=12, intermediate_size=1536)
    return InterBertConfig(
        hidden_size=384, pooled_size=64, num_region_classes=11,
        interaction=StreamConfig(interaction, **stream),
        text_extraction=StreamConfig(text_extraction, **stream),
        image_extraction=StreamConfig(1, **stream),
    )


def test_text_through_interaction_equals_the_bert_checkpoint(minilm_dir):
    bert = BertModel.from_pretrained(minilm_dir, add_pooling_layer=False).eval()
    model = InterBertModel(minilm_layout(6, 1)).eval()
    report = model.init_from_bert(minilm_dir)
    assert not any(k.startswith("interaction.") for k in report.not_loaded)

    input_ids = torch.tensor([[101, 1037, 3899, 2279, 2000, 1037, 2417, 2482, 102, 0, 0],
                              [101, 2048, 8870, 102, 0, 0, 0, 0, 0, 0, 0]])
    text_mask = input_ids != 0
    token_type_ids = torch.zeros_like(input_ids)
    with torch.no_grad():
        expected = bert(input_ids=input_ids, attention_mask=text_mask.long(),
                        token_type_ids=token_type_ids).last_hidden_state
        ours = model.text_interaction(input_ids, token_type_ids, text_mask)
    difference = (ours - expected)[text_mask].abs().max().item()
    assert difference < 1e-5


def test_layers_beyond_the_interaction_stack_fill_the_text_extractor(minilm_dir):
    model = InterBertForPretraining(minilm_layout(4, 2))
    report = model.init_from_bert(minilm_dir)
    bert = BertModel.from_pretrained(minilm_dir, add_pooling_layer=False)
    ours = model.interbert.text_extraction.layer[1].output.dense.weight
    assert torch.equal(ours, bert.encoder.layer[5].output.dense.weight)
    assert "interbert.text_extraction.layer.1.output.dense.weight" in report.loaded
    # what BERT lacks stays random, and is reported
    assert "interbert.region_embeddings.feature_projection.weight" in report.not_loaded
    assert "interbert.text_pooler.dense.weight" in report.not_loaded
    assert not any("pooler" in name for name in report.loaded)  # BERT's pooler feeds nothing of ours


def test_extraction_layers_the_checkpoint_lacks_stay_random(minilm_dir):
    model = InterBertForPretraining(minilm_layout(6, 2))
    report = model.init_from_bert(minilm_dir)
    assert "interbert.text_extraction.layer.0.attention.self.query.weight" in report.not_loaded
    assert len([k for k in report.loaded if k.startswith("interbert.interaction.")]) == 6 * 16


def test_a_checkpoint_of_another_width_is_refused(minilm_dir):
    model = InterBertForPretraining(InterBertConfig.from_preset("tiny"))
    with pytest.raises(ValueError, match="hidden size 384, the model's hidden_size is 128"):
        model.init_from_bert(minilm_dir)


def test_a_missing_directory_is_named(tmp_path):
    model = InterBertForPretraining(InterBertConfig.from_preset("tiny"))
    with pytest.raises(FileNotFoundError, match="neither model.safetensors nor pytorch_model.bin"):
        model.init_from_bert(tmp_path)
