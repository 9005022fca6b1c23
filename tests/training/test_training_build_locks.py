"""A build lock that no build holds (left by a start killed while DeepSpeed compiled an op) stops a
run with a line naming it, after a bounded wait, instead of hanging it forever; a lock a live build
works under is waited for as torch does."""
import os
import subprocess
import sys
import time

import pytest
from training_test_helpers import REPO, explain, pretrain_args, subprocess_env, write_ds_config

from interbert.training.extensions import StaleBuildLock, check_build_locks


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


def test_a_fresh_lock_is_left_to_the_build_that_just_took_it(tmp_path):
    make_lock(tmp_path, age=1.0)
    check_build_locks(lambda _: None, root=tmp_path, wait_seconds=0.5)


def test_a_run_facing_a_stale_lock_exits_2_naming_it(corpus, tmp_path):
    lock = make_lock(tmp_path / "extensions")
    config = write_ds_config(tmp_path / "ds.json", micro=2, world=1)
    env = subprocess_env(TORCH_EXTENSIONS_DIR=str(tmp_path / "extensions" / "py311_cpu"),
                         INTERBERT_BUILD_LOCK_WAIT="1")
    result = subprocess.run([sys.executable, *pretrain_args(corpus, config, tmp_path / "run", "--max-steps", "1")],
                            cwd=REPO, env=env, capture_output=True, text=True, timeout=120)
    assert result.returncode == 2, explain(result)
    assert "Traceback" not in result.stderr
    assert f"error: {lock}: a build lock that no build holds" in result.stderr
