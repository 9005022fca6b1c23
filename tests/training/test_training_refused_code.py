"""A checkpoint file that carries code is refused in this project's words: the line names the file
and the Python global it holds, says to resume only from your own runs, and never passes on
torch's advice to load the file unsafely. The files are real torch.save files; nothing in them
runs. (The --resume command line itself: test_training_safe_resume.py.)"""
from __future__ import annotations

import os

import pytest
import torch

from interbert.training.safe_load import UnsafeCheckpointError, weights_only_load

UNSAFE_ADVICE = ("weights_only", "re-run torch.load", "Weights only load failed", "add_safe_globals")


class RunsACommand:
    def __init__(self, marker: str):
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


class SomeonesClass:
    pass


@pytest.mark.parametrize("payload, global_name", [
    ("command", "posix.system"),
    ("instance", f"{SomeonesClass.__module__}.SomeonesClass"),
    ("builtin", "builtins.eval"),
], ids=["os.system", "a class", "builtins.eval"])
def test_a_checkpoint_holding_a_global_is_refused_in_our_words(tmp_path, payload, global_name):
    marker = tmp_path / "the-payload-ran"
    carried = {"command": RunsACommand(str(marker)), "instance": SomeonesClass(), "builtin": eval}[payload]
    model_states = tmp_path / "mp_rank_00_model_states.pt"
    torch.save({"module": {"weight": torch.zeros(2, 2)}, "interbert_client_state": carried}, model_states)

    with pytest.raises(UnsafeCheckpointError) as refused:
        weights_only_load(str(model_states), map_location="cpu")
    message = str(refused.value)
    assert message.startswith(f"{model_states}: refused to load: the file holds the Python global {global_name},")
    assert message.endswith("Resume only from checkpoints your own runs wrote")
    assert "\n" not in message and not any(advice in message for advice in UNSAFE_ADVICE), message
    assert not marker.exists()


def test_a_checkpoint_of_plain_state_still_loads(tmp_path):
    model_states = tmp_path / "mp_rank_00_model_states.pt"
    torch.save({"module": {"weight": torch.ones(2, 2)}, "global_steps": 3}, model_states)
    loaded = weights_only_load(str(model_states), map_location="cpu")
    assert loaded["global_steps"] == 3 and torch.equal(loaded["module"]["weight"], torch.ones(2, 2))
