import json

import pytest

import interbert
from interbert.config import InterBertConfig


@pytest.mark.parametrize("name", ["paper-base", "release-base", "tiny"])
def test_preset_round_trips_through_json(tmp_path, name):
    config = InterBertConfig.from_preset(name)
    config.to_json_file(tmp_path / "config.json")
    assert InterBertConfig.from_json_file(tmp_path / "config.json") == config


def test_presets_have_the_documented_layouts():
    paper = InterBertConfig.from_preset("paper-base")
    release = InterBertConfig.from_preset("release-base")
    assert (paper.interaction.num_layers, paper.text_extraction.num_layers,
            paper.image_extraction.num_layers) == (12, 6, 6)
    assert (release.interaction.num_layers, release.text_extraction.num_layers) == (6, 6)
    assert release.image_extraction.num_attention_heads == 8
    assert release.image_extraction.hidden_dropout_prob == 0.2
    assert paper.layer_norm_eps == release.layer_norm_eps == 1e-12
    assert paper.pooled_size == 1024


def test_hidden_size_not_divisible_by_heads_is_refused():
    with pytest.raises(ValueError, match="not divisible by image_extraction.num_attention_heads 7"):
        InterBertConfig.from_preset("tiny", image_extraction={"num_layers": 1, "num_attention_heads": 7})


def test_unknown_key_in_a_config_file_is_ignored_with_a_warning_naming_file_and_key(tmp_path):
    path = tmp_path / "newer.json"
    path.write_text(json.dumps({**InterBertConfig.from_preset("tiny").to_dict(), "hidden_sise": 768}))
    with pytest.warns(UserWarning, match=r"newer\.json: ignoring unknown InterBertConfig keys \['hidden_sise'\]"):
        config = InterBertConfig.from_json_file(path)
    assert config == InterBertConfig.from_preset("tiny")


def test_a_config_file_carries_its_model_type_and_version_and_refuses_another_type(tmp_path):
    path = tmp_path / "config.json"
    InterBertConfig.from_preset("tiny").to_json_file(path)
    written = json.loads(path.read_text())
    assert written["model_type"] == "interbert" and written["interbert_version"] == interbert.__version__
    path.write_text(json.dumps({**written, "model_type": "bert"}))
    with pytest.raises(ValueError, match=r"config\.json: model_type is 'bert', not 'interbert'"):
        InterBertConfig.from_json_file(path)


def test_unknown_preset_lists_the_choices():
    with pytest.raises(ValueError, match="choose one of"):
        InterBertConfig.from_preset("large")


def test_bad_mrm_loss_is_refused():
    with pytest.raises(ValueError, match="mrm_loss must be one of"):
        InterBertConfig(mrm_loss="mse")
