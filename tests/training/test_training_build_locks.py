"""A build lock that no build holds (left by a start killed while DeepSpeed compiled an op, a moment
ago or long since) stops a run with a line naming it, after a bounded wait that says what it waits
for, instead of hanging it forever; a lock a live build holds is waited for as torch does, and a
lock removed while the start waits lets it go on."""
import os
import re
import shutil
import subprocess
import sys
import time

import pytest

from interbert.training.extensions import StaleBuildLock, check_build_locks
from interbert.training.op_cache import op_build_directory
from tests.helpers.ds_config import write_ds_config
from tests.helpers.training_runs import REPO, explain, pretrain_args, subprocess_env, wait_for


def make_lock(root, name="deepspeed_shm_comm", age=600.0):
    folder = root / "py311_cpu" / name
    folder.mkdir(parents=True)
    lock = folder / "lock"
    lock.write_text("")
    past = time.time() - age
    os.utime(lock, (past, past))
    return lock


def test_a_lock_nothing_holds_stops_with_its_path(tmp_path):
    lock = make_lock(tmp_path)
    started = time.monotonic()
    with pytest.raises(StaleBuildLock, match=f"{lock}: a build lock that no build holds.*rm {lock}"):
        check_build_locks(lambda _: None, root=tmp_path, wait_seconds=0.5)
    assert time.monotonic() - started < 10


def test_a_lock_a_live_build_works_under_is_not_stale(tmp_path):
    lock = make_lock(tmp_path)
    builder = subprocess.Popen(["sleep", "30"], cwd=lock.parent)  # stands for ninja / the compiler
    try:
        check_build_locks(lambda _: None, root=tmp_path, wait_seconds=0.5)
    finally:
        builder.kill()
        builder.wait()


def test_a_lock_just_taken_by_a_live_build_is_waited_for_naming_its_holder(tmp_path):
    folder = tmp_path / "py311_cpu" / "cpu_adam"
    folder.mkdir(parents=True)
    lock = folder / "lock"
    take_it = ("import time\nfrom torch.utils.file_baton import FileBaton\n"
               f"assert FileBaton({str(lock)!r}).try_acquire()"
               "\nprint('taken', flush=True)\ntime.sleep(60)")
    # torch's own baton, taken as a build takes it, before any compiler runs in the folder
    holder = subprocess.Popen([sys.executable, "-c", take_it], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "taken"
        lines = []
        started = time.monotonic()
        check_build_locks(lines.append, root=tmp_path, wait_seconds=30)
        assert time.monotonic() - started < 5  # judged at once: a live build holds it
        assert len(lines) == 1 and re.search(rf"{lock} \(\d+ s old\) is held by process {holder.pid} ", lines[0])
    finally:
        holder.kill()
        holder.wait()


def test_a_lock_left_a_moment_ago_is_waited_on_then_stops_naming_it(tmp_path):
    lock = make_lock(tmp_path, age=0.0)  # a start interrupted mid-build, started again at once
    lines = []
    started = time.monotonic()
    with pytest.raises(StaleBuildLock, match=f"{lock}: a build lock that no build holds.*rm {lock}"):
        check_build_locks(lines.append, root=tmp_path, wait_seconds=2)
    assert 2 <= time.monotonic() - started < 10
    assert len(lines) == 1 and lines[0].startswith(f"waiting up to 2 s for the build lock {lock} (0 s old)")
    assert "no process on this machine holds it" in lines[0]


def run_pretrain(corpus, tmp_path, lock_wait: str, **popen) -> subprocess.Popen:
    config = write_ds_config(tmp_path / "ds.json", micro=2, world=1)
    env = subprocess_env(TORCH_EXTENSIONS_DIR=str(tmp_path / "extensions" / "py311_cpu"),
                         INTERBERT_BUILD_LOCK_WAIT=lock_wait)
    args = pretrain_args(corpus, config, tmp_path / "run", "--max-steps", "1", "--eval-images", "0",
                         "--validation-split", "")
    return subprocess.Popen([sys.executable, *args], cwd=REPO, env=env, text=True, **popen)


def test_a_run_facing_a_stale_lock_exits_2_naming_it(corpus, tmp_path):
    lock = make_lock(tmp_path / "extensions")
    process = run_pretrain(corpus, tmp_path, "1", stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    stdout, stderr = process.communicate(timeout=120)
    result = subprocess.CompletedProcess(process.args, process.returncode, stdout, stderr)
    assert result.returncode == 2, explain(result)
    assert "Traceback" not in result.stderr
    assert f"error: {lock}: a build lock that no build holds" in result.stderr


def test_a_run_started_again_at_once_says_what_it_waits_for_and_exits_2(corpus, tmp_path):
    lock = make_lock(tmp_path / "extensions", age=0.0)
    started = time.monotonic()
    process = run_pretrain(corpus, tmp_path, "3", stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    stdout, stderr = process.communicate(timeout=120)
    result = subprocess.CompletedProcess(process.args, process.returncode, stdout, stderr)
    assert result.returncode == 2, explain(result)
    assert time.monotonic() - started < 60
    assert "Traceback" not in result.stderr
    waiting = [line for line in result.stdout.splitlines() if "waiting up to 3 s for the build lock" in line]
    assert len(waiting) == 1 and f"{lock} (" in waiting[0], explain(result)
    errors = [line for line in result.stderr.splitlines() if "error:" in line]
    assert len(errors) == 1 and f"error: {lock}: a build lock that no build holds" in errors[0], explain(result)


def copy_built_op(name, extensions, monkeypatch):
    """This machine's build of the op (./run.sh setup made it), without any lock: the start then
    finds it built instead of compiling it for a minute (without one it compiles, and still passes)."""
    monkeypatch.delenv("TORCH_EXTENSIONS_DIR", raising=False)
    built = op_build_directory(name)
    if built.is_dir():
        shutil.copytree(built, extensions / name, ignore=shutil.ignore_patterns("lock"))


def test_a_lock_removed_while_the_start_waits_lets_it_go_on(corpus, tmp_path, monkeypatch):
    copy_built_op("deepspeed_shm_comm", tmp_path / "extensions" / "py311_cpu", monkeypatch)
    lock = tmp_path / "extensions" / "py311_cpu" / "deepspeed_shm_comm" / "lock"
    lock.parent.mkdir(parents=True, exist_ok=True)
    lock.write_text("")  # the op the start builds first, its lock left a moment ago
    log = tmp_path / "start.log"
    with open(log, "w") as output:
        process = run_pretrain(corpus, tmp_path, "120", stdout=output, stderr=subprocess.STDOUT)
        try:
            wait_for(lambda: f"for the build lock {lock} (" in log.read_text(), 60, "the start's waiting line")
            lock.unlink()  # the other machine's build finished, or the user removed it
            assert process.wait(timeout=240) == 0, log.read_text()[-4000:]
        finally:
            process.kill()
            process.wait()
    assert "Traceback" not in log.read_text()
    assert "step 1/1" in log.read_text()
