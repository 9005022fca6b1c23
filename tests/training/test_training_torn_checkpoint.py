"""A checkpoint with a file cut short (a copy interrupted, a full disk) or missing is refused by
`--resume` with one line naming the file and the newest complete checkpoint (exit 2, no traceback),
and a save points `latest` at a checkpoint only after every file of it is on disk."""
from __future__ import annotations

import json
import shutil
import subprocess
import sys
import textwrap

import pytest

from tests.helpers.ds_config import write_ds_config
from tests.helpers.training_runs import REPO, explain, free_port, pretrain_args, subprocess_env

pytestmark = pytest.mark.slow


def run(args: list[str]) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, *args], cwd=REPO, env=subprocess_env(), capture_output=True, text=True,
                          timeout=300)


COMMON = ("--validation-split", "", "--eval-images", "0", "--save-every", "1")


@pytest.fixture(scope="module")
def finished_run(corpus, tmp_path_factory):
    """A run of 2 steps with a checkpoint after each (written once, copied by each test)."""
    folder = tmp_path_factory.mktemp("torn")
    config = write_ds_config(folder / "ds.json", micro=8, world=1)
    result = run(pretrain_args(corpus, config, folder / "run", *COMMON, "--max-steps", "2"))
    assert result.returncode == 0, explain(result)
    return folder


@pytest.fixture
def two_checkpoints(corpus, finished_run, tmp_path):
    shutil.copytree(finished_run, tmp_path / "copy")
    output = tmp_path / "copy" / "run"

    def resume() -> subprocess.CompletedProcess:
        return run(pretrain_args(corpus, tmp_path / "copy" / "ds.json", output, *COMMON, "--max-steps", "3",
                                 "--resume"))
    return output / "checkpoints", resume


def one_error_line(result: subprocess.CompletedProcess) -> str:
    assert result.returncode == 2, explain(result)
    assert "Traceback" not in result.stderr, explain(result)
    errors = [line for line in result.stderr.splitlines() if "error:" in line]
    assert len(errors) == 1, explain(result)
    return errors[0]


@pytest.mark.parametrize("name, cut", [
    ("mp_rank_00_model_states.pt", 0.5),
    ("zero_pp_rank_0_mp_rank_00_optim_states.pt", 0.5),
    ("mp_rank_00_model_states.pt", -10),
])
def test_a_file_cut_short_names_itself_and_the_newest_complete_checkpoint(two_checkpoints, name, cut):
    checkpoints, resume = two_checkpoints
    torn = checkpoints / "global_step2" / name
    data = torn.read_bytes()
    keep = int(len(data) * cut) if cut > 0 else len(data) + cut
    torn.write_bytes(data[:keep])

    error = one_error_line(resume())
    assert f"{checkpoints / 'latest'} names global_step2: {torn}: incomplete" in error
    assert f"ends at byte {keep:,}" in error
    assert "the newest complete checkpoint is global_step1" in error
    assert f"echo global_step1 > {checkpoints / 'latest'}" in error
    if cut != 0.5 or "model" not in name:
        return
    (checkpoints / "latest").write_text("global_step1")  # what the line says to do
    result = resume()
    assert result.returncode == 0, explain(result)
    assert f"resumed from {checkpoints / 'global_step1'} at step 1" in result.stdout


def test_a_missing_model_states_file_names_the_previous_checkpoint(two_checkpoints):
    checkpoints, resume = two_checkpoints
    (checkpoints / "global_step2" / "mp_rank_00_model_states.pt").unlink()  # killed while saving
    error = one_error_line(resume())
    assert "names global_step2" in error and "is incomplete (no mp_rank_00_model_states.pt)" in error
    assert f"echo global_step1 > {checkpoints / 'latest'}" in error


SAVE = textwrap.dedent("""
    import json, os, sys
    from pathlib import Path
    import deepspeed, torch
    from interbert.training import checkpoint, checkpoint_folder

    folder = Path(sys.argv[1])
    events = []
    real_fsync, real_replace = os.fsync, os.replace
    def fsync(fd):
        events.append(("fsync", os.readlink(f"/proc/self/fd/{fd}")))
        real_fsync(fd)
    def replace(source, target):
        events.append(("replace", str(target)))
        real_replace(source, target)
    os.fsync, os.replace = fsync, replace  # observed, not changed

    model = torch.nn.Sequential(torch.nn.Linear(8, 8), torch.nn.Linear(8, 2))
    config = json.loads(Path(sys.argv[2]).read_text())
    engine, *_ = deepspeed.initialize(model=model, model_parameters=model.parameters(), config=config)
    for step in (1, 2):
        engine.backward(engine(torch.randn(4, 8)).sum())
        engine.step()
        path = checkpoint.save(engine, folder, {"step": step, "epoch": 0, "sampler": {}}, rank=0, precision="fp32")
        if step == 2:  # a crash after the files are written, before the commit: latest stays on step 1
            print(json.dumps({"latest_before_commit": (folder / "latest").read_text()}))
        checkpoint_folder.commit(folder, step, keep_last=0, rank=0)
    files = sorted(str(p) for p in (folder / "global_step2").iterdir())
    print(json.dumps({"events": events, "files": files, "latest": (folder / "latest").read_text()}))
""")


def test_latest_moves_only_after_every_file_of_the_checkpoint_is_on_disk(tmp_path):
    script = tmp_path / "save.py"
    script.write_text(SAVE)
    config = write_ds_config(tmp_path / "ds.json", micro=4, world=1)
    env = subprocess_env(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(free_port()), RANK="0", WORLD_SIZE="1",
                         LOCAL_RANK="0")
    done = subprocess.run([sys.executable, str(script), str(tmp_path / "checkpoints"), str(config)],
                          cwd=tmp_path,
                          env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, explain(done)
    lines = [json.loads(line) for line in done.stdout.splitlines() if line.startswith("{")]
    assert lines[0] == {"latest_before_commit": "global_step1"}
    report = lines[1]
    assert report["latest"] == "global_step2"
    events = [tuple(event) for event in report["events"]]
    pointer = events.index(("replace", str(tmp_path / "checkpoints" / "latest")), events.index(
        ("fsync", str(tmp_path / "checkpoints" / "global_step2"))))
    synced = {path for kind, path in events[:pointer] if kind == "fsync"}
    assert set(report["files"]) <= synced  # every file of global_step2, before the pointer moved
    assert ("fsync", str(tmp_path / "checkpoints" / "latest.partial")) in events[:pointer]
