"""Every start loads DeepSpeed's ops with this environment's ninja, whatever PATH finds first: torch
runs `ninja` for each op it loads, another version would rebuild them all and none would fail the start."""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from interbert.training.extensions import use_environment_ninja
from tests.helpers.training_runs import REPO, explain, subprocess_env

OURS = Path(sys.executable).parent / "ninja"
pytestmark = pytest.mark.skipif(not OURS.is_file(), reason=f"no ninja in this environment ({OURS})")


def _foreign_ninja(folder: Path) -> Path:
    """A `ninja` that only leaves a mark: called at all, it is the wrong one."""
    folder.mkdir()
    fake = folder / "ninja"
    fake.write_text(f"#!/bin/sh\necho \"$@\" >> {folder / 'called'}\nexit 1\n")
    fake.chmod(0o755)
    return fake


def test_another_ninja_first_on_path_is_put_behind_this_environments(monkeypatch, tmp_path):
    fake = _foreign_ninja(tmp_path / "bin")
    monkeypatch.setenv("PATH", f"{fake.parent}{os.pathsep}/usr/bin{os.pathsep}/bin")
    said: list[str] = []
    assert use_environment_ninja(said.append) is True
    assert shutil.which("ninja") == str(OURS)
    assert len(said) == 1 and str(fake) in said[0] and str(OURS) in said[0]
    said.clear()
    assert use_environment_ninja(said.append) is False and said == []  # already first: nothing to say


def test_no_ninja_on_path_gets_this_environments(monkeypatch, tmp_path):
    monkeypatch.setenv("PATH", str(tmp_path))
    said: list[str] = []
    assert use_environment_ninja(said.append) is True
    assert shutil.which("ninja") == str(OURS) and "none came first" in said[0]


LOAD_OPS = textwrap.dedent("""
    from interbert.training.extensions import build_cpu_ops, use_environment_ninja
    use_environment_ninja()
    print("loaded", build_cpu_ops())
""")


def test_the_cpu_ops_load_with_this_environments_ninja_when_another_comes_first(tmp_path):
    fake = _foreign_ninja(tmp_path / "bin")
    env = subprocess_env()
    env["PATH"] = os.pathsep.join([str(fake.parent), "/usr/bin", "/bin"])  # and not this environment's bin
    result = subprocess.run([sys.executable, "-c", LOAD_OPS], cwd=REPO, env=env, capture_output=True, text=True,
                            timeout=600)
    assert result.returncode == 0, explain(result)
    assert "loaded [" in result.stdout and f"ninja: {fake} came first on PATH" in result.stdout
    assert not (fake.parent / "called").exists(), (fake.parent / "called").read_text()
