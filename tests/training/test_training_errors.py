"""Mistakes fail before training starts, with messages that name the flag, file or key."""
from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from interbert.pretraining.command import main
from tests.helpers.ds_config import write_ds_config
from tests.helpers.training_runs import PRETRAIN, REPO, VOCAB, subprocess_env


@pytest.fixture(autouse=True)
def restore_environment():
    """pretrain.main() records the job's placement (RANK, WORLD_SIZE, ...) in os.environ."""
    saved = dict(os.environ)
    yield
    os.environ.clear()
    os.environ.update(saved)


@pytest.fixture
def args(corpus, tmp_path):
    config = write_ds_config(tmp_path / "ds.json", micro=4, world=1)
    return ["--deepspeed_config", str(config), "--preset", "tiny",
            "--features", str(corpus / "features"), "--captions", str(corpus / "captions.jsonl"),
            "--output-dir", str(tmp_path / "run"), "--max-steps", "1", "--vocab", VOCAB]


def _replace(args: list[str], flag: str, value: str) -> list[str]:
    args = list(args)
    args[args.index(flag) + 1] = value
    return args


def _fails_with(args, capsys, *fragments: str) -> None:
    assert main(args) == 2
    message = capsys.readouterr().err
    for fragment in fragments:
        assert fragment in message, message


def test_unknown_flag_is_refused_by_the_script(tmp_path):
    result = subprocess.run([sys.executable, PRETRAIN, "--deepspeed_config", "x.json",
                             "--output-dir", str(tmp_path), "--learning-rate", "1"],
                            cwd=REPO, capture_output=True, text=True, timeout=120,
                            env=subprocess_env())
    assert result.returncode == 2
    assert "unrecognized arguments: --learning-rate" in result.stderr


def test_missing_feature_store(args, capsys, tmp_path):
    _fails_with(_replace(args, "--features", str(tmp_path / "nowhere")), capsys,
                "--features", "nowhere", "no such directory")


def test_missing_caption_manifest(args, capsys, tmp_path):
    _fails_with(_replace(args, "--captions", str(tmp_path / "missing.jsonl")), capsys,
                "--captions", "missing.jsonl", "no such file")


def test_no_vocabulary_names_the_flags_that_give_one(args, capsys, tmp_path):
    without = args[:args.index("--vocab")] + args[args.index("--vocab") + 2:]
    _fails_with(without, capsys, "no vocabulary: pass --vocab FILE (the bert-base-uncased vocab.txt), or "
                                 "--init-bert DIR or --init-model DIR holding vocab.txt")


def test_a_folder_that_is_not_a_feature_store(args, capsys, tmp_path):
    (tmp_path / "photos").mkdir()
    _fails_with(_replace(args, "--features", str(tmp_path / "photos")), capsys,
                f"feature store {tmp_path / 'photos'}: no LMDB environment there")


def test_missing_deepspeed_config(args, capsys, tmp_path):
    _fails_with(_replace(args, "--deepspeed_config", str(tmp_path / "none.json")), capsys,
                "--deepspeed_config", "none.json", "no such file")


def test_config_whose_batch_sizes_disagree(args, capsys, tmp_path):
    config = tmp_path / "bad.json"
    write_ds_config(config, micro=4, world=1)
    values = json.loads(config.read_text())
    values["train_batch_size"] = 10
    config.write_text(json.dumps(values))
    _fails_with(_replace(args, "--deepspeed_config", str(config)), capsys,
                "bad.json", "batch sizes disagree", "train_batch_size 10",
                "train_micro_batch_size_per_gpu 4")


def test_invalid_json_config(args, capsys, tmp_path):
    config = tmp_path / "broken.json"
    config.write_text("{\"train_batch_size\": 4,")
    _fails_with(_replace(args, "--deepspeed_config", str(config)), capsys,
                "broken.json", "not valid JSON")


def test_fp16_requested_on_a_cpu(args, capsys):
    _fails_with(args + ["--precision", "fp16"], capsys, "--precision fp16", "CPU")


def test_resume_without_a_checkpoint(args, capsys):
    _fails_with(args + ["--resume"], capsys, "--resume", "no checkpoint")


def test_conflicting_model_flags(args, capsys, tmp_path):
    (tmp_path / "model").mkdir()
    _fails_with(args + ["--init-model", str(tmp_path / "model")], capsys,
                "--init-model", "--preset")


def test_invalid_model_config_names_the_file(args, capsys, tmp_path):
    model_config = tmp_path / "model.json"
    model_config.write_text(json.dumps({"hidden_size": 100, "interaction": {"num_layers": 1}}))
    without_preset = [a for a in args if a not in ("--preset", "tiny")]
    _fails_with(without_preset + ["--model-config", str(model_config)], capsys,
                "model.json", "hidden_size 100")


def test_a_store_of_another_feature_width_is_named_before_training(args, tmp_path, capsys):
    from interbert.config import InterBertConfig

    model_config = tmp_path / "model.json"
    InterBertConfig.from_preset("tiny", region_feature_size=1024).to_json_file(model_config)
    args = [a for a in args if a not in ("--preset", "tiny")] + ["--model-config", str(model_config)]
    _fails_with(args, capsys, "--features", "its region features have 2048 values, the model takes 1024",
                "region_feature_size")


def test_resuming_a_bf16_checkpoint_in_fp32_names_the_precisions(corpus, tmp_path, capsys):
    config = write_ds_config(tmp_path / "bf16.json", micro=4, world=1, precision="bf16")
    output = tmp_path / "run"
    first = [PRETRAIN, "--deepspeed_config", str(config), "--preset", "tiny", "--features", str(corpus / "features"),
             "--captions", str(corpus / "captions.jsonl"), "--output-dir", str(output), "--max-steps", "1",
             "--vocab", VOCAB, "--validation-split", "", "--eval-images", "0"]
    result = subprocess.run([sys.executable, *first], cwd=REPO, env=subprocess_env(), capture_output=True,
                            text=True, timeout=240)
    assert result.returncode == 0, result.stderr[-3000:]
    resumed = first[1:] + ["--resume", "--precision", "fp32", "--max-steps", "2"]
    _fails_with(resumed, capsys, f"--resume: {output / 'checkpoints' / 'global_step1'} was written in bf16, "
                                 "this run is fp32; resume with --precision bf16")
