import json

import pytest
import torch

from interbert.cli import main
from interbert.config import InterBertConfig
from interbert.modeling import InterBertForPretraining, InterBertModel


def test_save_load_round_trip_gives_identical_outputs(tmp_path, small_config, batch_factory):
    model = InterBertForPretraining(small_config).eval()
    batch = batch_factory(small_config, [5, 3], [4, 6])
    model.save_pretrained(tmp_path / "model")
    assert sorted(p.name for p in (tmp_path / "model").iterdir()) == ["config.json", "model.safetensors"]
    loaded = InterBertForPretraining.from_pretrained(tmp_path / "model").eval()
    assert loaded.config == small_config
    with torch.no_grad():
        assert torch.equal(model.itm_score(**batch), loaded.itm_score(**batch))


def test_a_loaded_model_scores_as_saved_without_calling_eval_and_takes_dtype_and_device(tmp_path, small_config,
                                                                                        batch_factory):
    model = InterBertForPretraining(small_config).eval()
    model.save_pretrained(tmp_path / "model")
    loaded = InterBertForPretraining.from_pretrained(tmp_path / "model")
    assert not loaded.training  # dropout off: the same batch scores the same twice
    batch = batch_factory(small_config, [5, 3], [4, 6])
    with torch.no_grad():
        assert torch.equal(loaded.itm_score(**batch), loaded.itm_score(**batch))
        assert torch.equal(loaded.itm_score(**batch), model.itm_score(**batch))
    half = InterBertForPretraining.from_pretrained(tmp_path / "model", dtype=torch.bfloat16, device="cpu")
    assert not half.training and {p.dtype for p in half.parameters()} == {torch.bfloat16}
    assert {p.device.type for p in half.parameters()} == {"cpu"}


def test_the_backbone_loads_from_a_pretraining_directory(tmp_path, small_config, batch_factory):
    model = InterBertForPretraining(small_config).eval()
    model.save_pretrained(tmp_path)
    backbone = InterBertModel.from_pretrained(tmp_path).eval()
    batch = batch_factory(small_config, [5, 3], [4, 6])
    with torch.no_grad():
        assert torch.equal(backbone(**batch).pooled_text, model.interbert(**batch).pooled_text)


def test_a_backbone_directory_does_not_pass_for_a_pretraining_model(tmp_path, small_config):
    InterBertModel(small_config).save_pretrained(tmp_path)
    with pytest.raises(ValueError, match="without the MSM, MRM and ITM heads"):
        InterBertForPretraining.from_pretrained(tmp_path)


def test_a_missing_weights_file_is_named(tmp_path, small_config):
    small_config.to_json_file(tmp_path / "config.json")
    with pytest.raises(FileNotFoundError, match="model.safetensors is missing"):
        InterBertForPretraining.from_pretrained(tmp_path)


def test_info_counts_the_release_layout(capsys):
    assert main(["info", "--preset", "release-base"]) == 0
    report = json.loads(capsys.readouterr().out)
    parameters = report["parameters"]
    assert parameters["total"] == 157_021_565
    assert parameters["total_decoder_counted_twice"] == 180_462_461
    assert parameters["image_extraction"] == parameters["text_extraction"]
    assert sum(v for k, v in parameters.items()
               if k not in ("backbone", "heads", "total", "total_decoder_counted_twice")) == parameters["total"]


def test_info_reads_a_config_file(tmp_path, capsys, small_config):
    small_config.to_json_file(tmp_path / "c.json")
    assert main(["info", "--config", str(tmp_path / "c.json")]) == 0
    parameters = json.loads(capsys.readouterr().out)["parameters"]
    expected = sum(p.numel() for p in InterBertForPretraining(small_config).parameters())
    assert parameters["total"] == expected


def test_paper_base_has_twelve_interaction_layers_more_than_release(capsys):
    main(["info", "--preset", "paper-base"])
    paper = json.loads(capsys.readouterr().out)["parameters"]
    release = InterBertConfig.from_preset("release-base")
    assert paper["interaction"] == 2 * paper["text_extraction"]
    assert paper["total"] - 157_021_565 == paper["text_extraction"]  # 6 more layers
    assert release.interaction.num_layers == 6


def test_a_truncated_weights_file_is_named_not_a_traceback(tmp_path, small_config, capsys):
    from interbert.modeling.checkpoint_files import ModelFileError

    InterBertForPretraining(small_config).save_pretrained(tmp_path / "model")
    weights = tmp_path / "model" / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:1000])  # a copy cut short
    with pytest.raises(ModelFileError,
                       match=r"model\.safetensors: incomplete: .* ends at byte 1,000; download or copy"):
        InterBertForPretraining.from_pretrained(tmp_path / "model")
    assert main(["evaluate", "retrieval", "--model", str(tmp_path / "model"), "--features", str(tmp_path),
                 "--captions", str(weights)]) == 2
    assert "model.safetensors: incomplete: " in capsys.readouterr().err
