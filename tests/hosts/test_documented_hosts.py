"""The "Several hosts" block of docs/training.md runs as written on the two loopback hosts: the
same rules as tests/test_documented_commands.py (a fresh folder linking the checkout's
ds_configs/, hostfiles/ and interbert/; only job lengths cut), with our `ssh` first on PATH."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests import test_documented_commands as documented

REPO = Path(__file__).resolve().parents[2]
MARK = "<!-- runs on two loopback hosts as written: tests/hosts/test_documented_hosts.py -->"

pytestmark = pytest.mark.slow


def test_the_several_hosts_block_runs_on_two_hosts(two_hosts, tmp_path):
    text = (REPO / "docs" / "training.md").read_text()
    blocks = [block for block in documented.marked_blocks(text.replace(MARK, documented.MARK))
              if any("interbert launch" in line for line in block)]
    assert len(blocks) == 1 and MARK in text
    for name in ("ds_configs", "hostfiles", "interbert"):
        (tmp_path / name).symlink_to(REPO / name)
    env = {key: value for key, value in os.environ.items()
           if key not in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT", "DS_ENV_FILE")}
    env.update(PATH=f"{Path(sys.executable).parent}{os.pathsep}{env['PATH']}", DS_ACCELERATOR="cpu",
               OMP_NUM_THREADS="1", PYTHONPATH=str(REPO))
    script = "set -euo pipefail\n" + "\n".join(documented.shortened(command) for command in blocks[0])
    result = subprocess.run(["bash", "-c", script], cwd=tmp_path, env=two_hosts.env(env), capture_output=True,
                            text=True, timeout=600)
    assert result.returncode == 0, f"{script}\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}"
    assert "127.0.0.2: " in result.stdout and "2 rank(s) via deepspeed/torchrun" in result.stdout
    run_config = json.loads((tmp_path / "runs" / "two-hosts" / "run_config.json").read_text())
    assert run_config["world_size"] == 2
    assert (tmp_path / "runs" / "two-hosts" / "model" / "config.json").is_file()
