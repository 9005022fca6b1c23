"""--resume reads DeepSpeed's checkpoint files with the weights-only unpickler: a checkpoint file
that carries code (a pickled object whose reduction calls os.system) stops the run with one line
naming the file and the global, in our words (never torch's advice to load it unsafely), and the
code never runs. A `latest` that names a missing or half-written
checkpoint is one line naming the complete one to resume from instead."""
from __future__ import annotations

import os
import subprocess
import sys

import pytest
import torch

from tests.helpers.ds_config import write_ds_config
from tests.helpers.training_runs import REPO, explain, pretrain_args, subprocess_env

pytestmark = pytest.mark.slow


class Payload:
    def __init__(self, marker: str):
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


def run(args: list[str]) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, *args], cwd=REPO, env=subprocess_env(), capture_output=True, text=True,
                          timeout=300, check=False)


def test_a_checkpoint_that_carries_code_is_refused_and_never_runs(corpus, tmp_path):
    config = write_ds_config(tmp_path / "ds.json", micro=8, world=1)
    output = tmp_path / "run"
    common = ("--validation-split", "", "--eval-images", "0", "--save-every", "1")
    result = run(pretrain_args(corpus, config, output, *common, "--max-steps", "2"))
    assert result.returncode == 0, explain(result)

    model_states = output / "checkpoints" / "global_step2" / "mp_rank_00_model_states.pt"
    state = torch.load(model_states, weights_only=False)  # this test wrote it: trusted here
    marker = tmp_path / "the-payload-ran"
    state["interbert_client_state"] = Payload(str(marker))
    torch.save(state, model_states)

    result = run(pretrain_args(corpus, config, output, *common, "--max-steps", "3", "--resume"))
    assert result.returncode == 2, explain(result)
    error = [line for line in result.stderr.splitlines() if "error:" in line]
    assert len(error) == 1, explain(result)
    assert f"{model_states}: refused to load: the file holds the Python global posix.system" in error[0]
    assert error[0].endswith("Resume only from checkpoints your own runs wrote")
    # in our words: torch's advice to load the file unsafely is never passed on
    assert not any(advice in result.stderr for advice in ("weights_only", "re-run torch.load", "Weights only load"))
    assert "Traceback" not in result.stderr
    assert not marker.exists()


def test_latest_naming_a_half_written_checkpoint_names_the_previous_one(corpus, tmp_path):
    config = write_ds_config(tmp_path / "ds.json", micro=8, world=1)
    output = tmp_path / "run"
    common = ("--validation-split", "", "--eval-images", "0", "--save-every", "1")
    assert run(pretrain_args(corpus, config, output, *common, "--max-steps", "2")).returncode == 0
    checkpoints = output / "checkpoints"
    (checkpoints / "global_step2" / "mp_rank_00_model_states.pt").unlink()  # killed while saving

    result = run(pretrain_args(corpus, config, output, *common, "--max-steps", "3", "--resume"))
    assert result.returncode == 2, explain(result)
    error = [line for line in result.stderr.splitlines() if "error:" in line]
    assert len(error) == 1 and "names global_step2" in error[0], explain(result)
    assert "is incomplete (no mp_rank_00_model_states.pt)" in error[0]
    assert f"echo global_step1 > {checkpoints / 'latest'}" in error[0]

    (checkpoints / "latest").write_text("global_step1")
    result = run(pretrain_args(corpus, config, output, *common, "--max-steps", "3", "--resume"))
    assert result.returncode == 0, explain(result)
    assert "resumed from" in result.stdout and "at step 1" in result.stdout
