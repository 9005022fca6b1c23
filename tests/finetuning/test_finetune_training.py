"""A few fine-tuning steps per task through the real entry point and DeepSpeed engine (one CPU
rank, tiny preset); exact resume; evaluation of the saved EMA weights."""
from __future__ import annotations

import json
import math
import shutil

import pytest
import torch

from interbert.finetuning.model import InterBertForFinetuning
from interbert.modeling import InterBertForPretraining

pytestmark = pytest.mark.slow


def _flickr_args(ft_corpus, config, output, *extra):
    return ("--task", "flickr30k", "--deepspeed_config", config, "--preset", "tiny",
            "--features", ft_corpus / "features", "--captions", ft_corpus / "captions.jsonl",
            "--output-dir", output, "--eval-images", "4", *extra)


FLICKR_SETTINGS = {"max_regions": 12, "hard_negatives": {"pool_size": 3, "refresh_every": 2},
                   "ema": {"rate": 0.5}}


def test_flickr30k_steps_log_evaluate_and_save_raw_and_ema_models(ft_corpus, tmp_path, run_finetune,
                                                                   ds_config_writer, train_log):
    config = ds_config_writer(tmp_path / "ds.json", finetune=FLICKR_SETTINGS)
    output = tmp_path / "run"
    assert run_finetune(*_flickr_args(ft_corpus, config, output, "--max-steps", "3", "--two-stage-k", "2")) == 0
    log = train_log(output)
    assert [r["step"] for r in log] == [1, 2, 3] and all(math.isfinite(r["loss"]) for r in log)
    assert log[0]["hard_negative_fallback_fraction"] == 0.0  # mined before the first step
    results = json.loads((output / "results.json").read_text())
    for key in ("t2i_r@1", "i2t_r@10", "t2i_median_rank", "two_stage_t2i_r@1", "ema_t2i_r@1"):
        assert key in results
    raw = InterBertForPretraining.from_pretrained(output / "model").state_dict()
    averaged = InterBertForPretraining.from_pretrained(output / "model_ema").state_dict()
    name = "interbert.interaction.layer.0.attention.self.query.weight"
    assert not torch.equal(raw[name], averaged[name])
    assert torch.equal(raw["msm_head.bias"], averaged["msm_head.bias"])  # frozen: unused by retrieval
    assert (output / "tensorboard").is_dir()


def test_flickr30k_resume_repeats_the_uninterrupted_losses(ft_corpus, tmp_path, run_finetune, ds_config_writer,
                                                           train_log):
    config = ds_config_writer(tmp_path / "ds.json", accumulation=2, finetune=FLICKR_SETTINGS)
    whole, resumed = tmp_path / "whole", tmp_path / "resumed"
    common = ("--max-steps", "4", "--eval-images", "2")
    assert run_finetune(*_flickr_args(ft_corpus, config, whole, *common, "--save-every", "2", "--keep-last", "0")) == 0
    (resumed / "checkpoints").mkdir(parents=True)
    shutil.copytree(whole / "checkpoints" / "global_step2", resumed / "checkpoints" / "global_step2")
    (resumed / "checkpoints" / "latest").write_text("global_step2")
    assert run_finetune(*_flickr_args(ft_corpus, config, resumed, *common, "--resume")) == 0
    expected, got = train_log(whole)[2:], train_log(resumed)
    assert [r["step"] for r in got] == [3, 4]
    for want, have in zip(expected, got):
        for key in ("loss", "accuracy", "learning_rate", "grad_norm"):
            assert have[key] == want[key], (have["step"], key)
    ema_whole = json.loads((whole / "results.json").read_text())["ema_t2i_mean_rank"]
    assert json.loads((resumed / "results.json").read_text())["ema_t2i_mean_rank"] == ema_whole


def test_vcr_steps_report_q2a_qa2r_and_q2ar(vcr_data, tmp_path, run_finetune, ds_config_writer, train_log):
    config = ds_config_writer(tmp_path / "ds.json", finetune={"max_regions": 12, "max_text_len": 40})
    output = tmp_path / "run"
    status = run_finetune("--task", "vcr", "--deepspeed_config", config, "--preset", "tiny",
                          "--features", vcr_data["features"], "--gt-features", vcr_data["gt_features"],
                          "--vcr-train", vcr_data["train"], "--vcr-val", vcr_data["val"],
                          "--output-dir", output, "--max-steps", "2")
    assert status == 0
    assert len(train_log(output)) == 2
    results = json.loads((output / "results.json").read_text())
    assert results["questions"] == 4
    assert results["q2ar_accuracy"] <= min(results["q2a_accuracy"], results["qa2r_accuracy"])
    assert "ema_q2ar_accuracy" in results
    model = InterBertForFinetuning.from_pretrained(output / "model")
    assert model.task.kind == "multiple_choice" and model.head is not None


def test_glue_evaluation_uses_the_ema_weights_when_asked(tmp_path, run_finetune, ds_config_writer,
                                                          glue_writer, train_log):
    varied = [f"{i}\tmain\tf\t2012\t{i}\tnone\tnone\t{a}\t{b}\t{score}" for i, (a, b, score) in enumerate([
        ("A cat sleeps.", "A cat is sleeping.", 4.6), ("Two men talk.", "A woman sings loudly.", 0.4),
        ("The bus is red.", "A red bus.", 3.9), ("Kids play ball.", "Children are playing.", 3.1),
        ("He cooks rice.", "The market fell today.", 0.1)], start=2)]
    data = glue_writer(tmp_path / "STS-B", "stsb", extra_lines=varied)
    config = ds_config_writer(tmp_path / "ds.json", precision="bf16",
                              finetune={"max_text_len": 32, "ema": {"rate": 0.5}})
    output = tmp_path / "run"
    common = ("--task", "glue-stsb", "--deepspeed_config", config, "--glue-dir", data)
    assert run_finetune(*common, "--preset", "tiny", "--output-dir", output, "--max-steps", "3") == 0
    assert len(train_log(output)) == 3
    results = json.loads((output / "results.json").read_text())
    assert results["pearson"] != results["ema_pearson"]
    for weights, prefix in (("model", ""), ("model_ema", "ema_")):
        evaluation = tmp_path / f"eval_{weights}"
        assert run_finetune(*common, "--init-model", output / weights, "--output-dir", evaluation,
                            "--eval-only") == 0
        again = json.loads((evaluation / "results.json").read_text())
        assert again["pearson"] == pytest.approx(results[f"{prefix}pearson"], abs=1e-6)


def test_glue_classification_reports_f1_for_mrpc(tmp_path, run_finetune, ds_config_writer, glue_writer):
    data = glue_writer(tmp_path / "MRPC", "mrpc", repeat=2)
    config = ds_config_writer(tmp_path / "ds.json", finetune={"max_text_len": 32, "ema": {"enabled": False}})
    output = tmp_path / "run"
    assert run_finetune("--task", "glue-mrpc", "--deepspeed_config", config, "--glue-dir", data, "--preset", "tiny",
                        "--output-dir", output, "--max-steps", "2") == 0
    results = json.loads((output / "results.json").read_text())
    assert set(results) == {"step", "accuracy", "f1"}
    assert not (output / "model_ema").exists()


def test_config_section_errors_name_the_key(ft_corpus, tmp_path, run_finetune, ds_config_writer, capsys):
    config = ds_config_writer(tmp_path / "ds.json", finetune={"max_regions": 12, "hard_negative": {}})
    status = run_finetune(*_flickr_args(ft_corpus, config, tmp_path / "run", "--max-steps", "1"))
    assert status == 2
    assert "ds.json: finetune: unknown keys ['hard_negative']" in capsys.readouterr().err


def test_unknown_task_is_named_with_the_choices(ft_corpus, tmp_path, run_finetune, ds_config_writer, capsys):
    config = ds_config_writer(tmp_path / "ds.json")
    assert run_finetune("--task", "glue-wnli", "--deepspeed_config", config, "--preset", "tiny",
                        "--output-dir", tmp_path / "run") == 2
    assert "unknown GLUE task 'wnli'; choose one of glue-cola" in capsys.readouterr().err


def test_the_script_runs_by_path_as_the_launcher_runs_it():
    import subprocess
    import sys
    from pathlib import Path

    repo = Path(__file__).resolve().parents[2]
    result = subprocess.run([sys.executable, "interbert/finetune.py", "--help"], cwd=repo, capture_output=True,
                            text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert "--task" in result.stdout and "--local_rank" in result.stdout


def test_vcr_test_split_writes_the_leaderboards_q2ar_submission(vcr_data, tmp_path, run_finetune, ds_config_writer):
    """The unlabelled test split: Q->A and QA->R conditioned on each of the 4 answers, as the
    leaderboard's CSV (probabilities per 4-way group), and the conditioned texts really differ."""
    import csv

    from interbert.data.text.tokenization import default_vocab_file, load_tokenizer
    from interbert.finetuning.vcr import SUBMISSION_COLUMNS, VcrDataset, read_vcr

    lines = [json.loads(line) for line in vcr_data["val"].read_text().splitlines()]
    for line in lines:
        del line["answer_label"], line["rationale_label"]
        line["annot_id"] = line["annot_id"].replace("val-", "test-")
    test = tmp_path / "test.jsonl"
    test.write_text("".join(json.dumps(line) + "\n" for line in lines))
    config = ds_config_writer(tmp_path / "ds.json", finetune={"max_regions": 12, "max_text_len": 40})
    output = tmp_path / "run"
    status = run_finetune("--task", "vcr", "--deepspeed_config", config, "--preset", "tiny", "--eval-only",
                          "--features", vcr_data["features"], "--gt-features", vcr_data["gt_features"],
                          "--vcr-val", vcr_data["val"], "--vcr-test", test, "--output-dir", output)
    assert status == 0
    with open(output / "vcr_test_submission.csv", newline="") as handle:
        rows = list(csv.reader(handle))
    assert tuple(rows[0]) == SUBMISSION_COLUMNS and len(SUBMISSION_COLUMNS) == 21
    assert [row[0] for row in rows[1:]] == [line["annot_id"] for line in lines]
    for row in rows[1:]:
        groups = [sum(float(v) for v in row[1 + 4 * g:5 + 4 * g]) for g in range(5)]
        assert groups == pytest.approx([1.0] * 5, abs=1e-5)

    dataset = VcrDataset(read_vcr(test, require_labels=False), vcr_data["features"],
                         load_tokenizer(default_vocab_file()), max_length=64, conditioned=True)
    assert len(dataset) == 5 * len(lines)
    firsts = [tuple(dataset[1 + g]["texts"][0][0]) for g in range(4)]  # QA->R on answers 0..3, rationale 0
    assert len(set(firsts)) == 4
