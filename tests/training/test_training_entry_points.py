"""`interbert pretrain` and `python -m interbert` run the same pretraining as
`interbert/pretrain.py`; `--version` names the package version; help texts give each default once."""
from __future__ import annotations

import argparse
import importlib.util
import subprocess
import sys

import pytest

import interbert
from interbert.finetuning.command import build_parser as build_finetune_parser
from interbert.pretraining.command import build_parser
from tests.helpers.ds_config import write_ds_config
from tests.helpers.train_log import read_train_log
from tests.helpers.training_runs import REPO, VOCAB, explain, subprocess_env


def interbert_command(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "interbert", *args], cwd=REPO, env=subprocess_env(),
                          capture_output=True, text=True, timeout=300)


def pretrain_command(corpus, tmp_path, config) -> subprocess.CompletedProcess:
    return interbert_command("pretrain", "--deepspeed_config", str(config), "--preset", "tiny",
                             "--features", str(corpus / "features"), "--captions", str(corpus / "captions.jsonl"),
                             "--output-dir", str(tmp_path / "run"), "--max-steps", "2", "--num-workers", "0",
                             "--validation-split", "", "--eval-images", "0", "--save-every", "0", "--log-every", "1",
                             "--vocab", VOCAB)


@pytest.mark.slow
def test_interbert_pretrain_trains_saves_and_feeds_the_configs_csv_monitor(corpus, tmp_path):
    csv = {"enabled": True, "output_path": str(tmp_path / "csv"), "job_name": "tiny"}
    config = write_ds_config(tmp_path / "ds.json", micro=8, world=1, csv_monitor=csv)
    result = pretrain_command(corpus, tmp_path, config)
    assert result.returncode == 0, explain(result)
    assert (tmp_path / "run" / "model" / "model.safetensors").is_file()
    losses = [record["loss"] for record in read_train_log(tmp_path / "run")]
    rows = (tmp_path / "csv" / "tiny" / "train_loss.csv").read_text().splitlines()
    assert rows[0] == "step,loss" and [float(r.split(",")[1]) for r in rows[1:]] == pytest.approx(losses)


def test_a_monitor_whose_package_is_missing_stops_the_run_with_one_line(corpus, tmp_path):
    if importlib.util.find_spec("wandb") is not None:
        pytest.skip("wandb is installed here")
    config = write_ds_config(tmp_path / "ds.json", micro=8, world=1, wandb={"enabled": True, "project": "x"})
    result = pretrain_command(corpus, tmp_path, config)
    assert result.returncode == 2, explain(result)
    assert result.stderr.strip().endswith("the DeepSpeed config enables wandb, but the wandb package is not installed: "
                                          "pip install wandb, or set wandb.enabled to false")


def test_a_usage_error_of_interbert_pretrain_is_one_line_with_its_name(tmp_path):
    result = interbert_command("pretrain", "--deepspeed_config", str(tmp_path / "none.json"),
                               "--output-dir", str(tmp_path / "run"), "--preset", "tiny", "--model-config", "x.json")
    assert result.returncode == 2
    assert result.stderr.strip() == "interbert pretrain: error: give --preset or --model-config, not both"


def test_version():
    result = interbert_command("--version")
    assert result.returncode == 0 and result.stdout.strip() == f"interbert {interbert.__version__}"


@pytest.mark.parametrize("parser", [build_parser, build_finetune_parser], ids=["pretrain", "finetune"])
def test_every_default_is_said_once(parser):
    for action in parser()._actions:
        text = action.help or ""
        assert text.count("default") <= 1, (action.dest, text)
        if action.default not in (None, False, argparse.SUPPRESS):
            assert "default" in text, (action.dest, text)


@pytest.mark.parametrize("script", ["pretrain", "finetune"])
def test_the_launcher_scripts_without_the_installed_package_say_so_in_one_line(script):
    """`python -S` skips site-packages, where the editable install lives: the scripts then cannot
    import interbert (they no longer put the checkout on sys.path) and say what to do."""
    result = subprocess.run([sys.executable, "-S", str(REPO / "interbert" / f"{script}.py"), "--help"],
                            cwd=REPO, capture_output=True, text=True, timeout=120)
    assert result.returncode == 2, explain(result)
    assert result.stdout == ""
    assert result.stderr.strip().splitlines() == [
        f"interbert/{script}.py: the interbert package is not installed in this Python ({sys.executable}): "
        "run ./run.sh or `pip install -e .` in the repository, or start the ranks with "
        f"`deepspeed --module interbert.{script}` from the repository root"]
