"""Host synchronisation per optimizer step (docs/training.md, "Host synchronisation"): inside a
step the model and the objective never read a tensor on the host, and no op of the forward or the
backward makes the device wait (counted at the dispatcher: a boolean-mask index or a nonzero
anywhere would count); the loop reads one flag per step (fp32/bf16) and the window's sums once
per flush; DeepSpeed's fp32 ZeRO-1 step reads its own, pinned here so a change is seen."""
import json
import subprocess
import sys

from tests.helpers.ds_config import write_ds_config
from tests.helpers.training_runs import REPO, VOCAB, explain, subprocess_env

STEPS, LOG_EVERY = 4, 2
STEP_SYNCS = 3  # DeepSpeed 0.19.8's fp32 ZeRO-1 step with torch's fused AdamW (gradient norm, overflow check): its own;
# the unfused AdamW read each parameter group's step count too (2 groups: 5 per step)


def test_one_host_read_per_step_and_one_per_logging_window(corpus, tmp_path):
    config = write_ds_config(tmp_path / "ds.json", micro=2, accumulation=2, world=1)
    command = [sys.executable, "tests/training/host_sync_probe.py", "--deepspeed_config", str(config),
               "--preset", "tiny", "--features", str(corpus / "features"), "--captions",
               str(corpus / "captions.jsonl"), "--output-dir", str(tmp_path / "run"), "--num-workers", "0",
               "--eval-images", "0", "--validation-split", "", "--log-every", str(LOG_EVERY),
               "--max-steps", str(STEPS), "--save-every", "0", "--vocab", VOCAB]
    result = subprocess.run(command, cwd=REPO, env=subprocess_env(), capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, explain(result)
    probe = json.loads(result.stdout.strip().splitlines()[-1])
    assert probe["status"] == 0 and probe["steps"] == STEPS
    # fp32: the non-finite flag once per step; the sums once per window of LOG_EVERY steps
    assert probe["host_reads"] == STEPS + STEPS // LOG_EVERY
    inside = {name: count for name, count in probe["calls"].items() if not name.startswith("training/loop.py")}
    assert inside == {}, f"host reads inside a step from the model or the objective: {inside}"
    # within the steps themselves, the loop's only read is the flag (the flushes run between steps)
    assert probe["calls"] == {"training/loop.py:cpu": STEPS, "training/loop.py:__float__": STEPS,
                              "training/loop.py:tolist": STEPS}  # tolist: the flags, already on the host
    syncs = probe["syncs"]
    assert not [op for op in syncs if op.startswith(("forward:", "backward:"))], syncs
    assert syncs == {"agree:aten._local_scalar_dense.default": STEPS,  # the non-finite flag
                     "step:aten._local_scalar_dense.default": STEP_SYNCS * STEPS}, syncs
