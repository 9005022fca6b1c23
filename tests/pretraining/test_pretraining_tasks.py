"""`--tasks` chooses the pretraining tasks (Table 2): the run trains, logs and records exactly
those, under their names."""
import json
import subprocess
import sys

import pytest

from interbert.config import InterBertConfig, parse_pretraining_tasks
from tests.helpers.ds_config import write_ds_config
from tests.helpers.train_log import read_train_log
from tests.helpers.training_runs import REPO, explain, pretrain_args, subprocess_env


def run(corpus, tmp_path, tasks: str):
    config = write_ds_config(tmp_path / "ds.json", micro=4, world=1)
    output = tmp_path / "run"
    args = pretrain_args(corpus, config, output, "--max-steps", "2", "--validation-split", "", "--eval-images", "0",
                         "--tasks", tasks)
    result = subprocess.run([sys.executable, *args], cwd=REPO, env=subprocess_env(), capture_output=True, text=True,
                            timeout=240)
    return result, output


def test_table_2s_baseline_runs_under_its_own_names(corpus, tmp_path):
    result, output = run(corpus, tmp_path, "mlm,mom")
    assert result.returncode == 0, explain(result)
    assert "tasks: mlm, mom" in result.stdout
    assert "(mlm " in result.stdout and " mom " in result.stdout and "itm" not in result.stdout.split("tasks:")[1]
    step = read_train_log(output)[-1]
    assert {"loss_mlm", "loss_mom", "accuracy_mlm", "accuracy_mom"} <= set(step)
    assert not any(key.endswith("_itm") or key.endswith("_msm") for key in step)
    assert step["loss"] == pytest.approx(step["loss_mlm"] + step["loss_mom"], rel=1e-5)  # ITM trains nothing
    run_config = json.loads((output / "run_config.json").read_text())
    assert run_config["tasks"] == ["mlm", "mom"]
    saved = json.loads((output / "model" / "config.json").read_text())
    assert saved["pretraining_tasks"] == "mlm,mom"


def test_two_text_tasks_are_refused_naming_the_flag(corpus, tmp_path):
    result, _ = run(corpus, tmp_path, "msm,mlm,itm")
    assert result.returncode == 2, explain(result)
    assert "--tasks: msm and mlm are both text tasks; choose one" in result.stderr
    assert "Traceback" not in result.stderr


def test_the_task_list_is_checked_and_written_in_canonical_form():
    assert parse_pretraining_tasks(" MSM, mrm ,itm,itm") == ("msm", "mrm", "itm")
    with pytest.raises(ValueError, match="unknown task"):
        parse_pretraining_tasks("msm,nsp")
    assert InterBertConfig.from_preset("tiny", pretraining_tasks="itm, mom").pretraining_tasks == "itm,mom"
