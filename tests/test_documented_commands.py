"""Every block of CPU commands in the docs runs as written.

A fenced bash block right after the marker line below is run, line by line in one bash, in a fresh
directory that links the checkout's ds_configs/, hostfiles/ and interbert/, with the virtual
environment first on PATH. The blocks of one document share the directory, in order (the
evaluation after the training). Only the length of each job is cut, by appending flags that
override the written ones (argparse keeps the last): fewer synthetic images, two optimizer steps,
fewer evaluation images. Nothing else of a command is changed."""
from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
MARK = "<!-- runs on a CPU as written: tests/test_documented_commands.py -->"
SHORTER = (  # (what a command line contains, what the test appends)
    ("interbert data synth", "--images 300"),
    ("pretrain", "--max-steps 2 --eval-images 4"),
    ("finetune", "--max-steps 2"),
    ("interbert evaluate retrieval", "--images 20"),
)
DOCUMENTS = sorted({path.name for path in (REPO / "docs").glob("*.md") if MARK in path.read_text()})

pytestmark = pytest.mark.slow


def marked_blocks(text: str) -> list[list[str]]:
    """The commands of every bash block that follows the marker, continuation lines joined."""
    blocks = []
    for match in re.finditer(re.escape(MARK) + r"\n```bash\n(.*?)```", text, re.S):
        joined = match.group(1).replace("\\\n", " ")
        blocks.append([line for line in joined.splitlines() if line.strip() and not line.lstrip().startswith("#")])
    return blocks


def shortened(command: str) -> str:
    for marker, extra in SHORTER:
        if marker in command and "=$(" not in command:
            return f"{command.split('  #')[0]} {extra}"
    return command


def test_the_docs_mark_their_cpu_commands():
    assert {"training.md", "finetuning.md"} <= set(DOCUMENTS)


@pytest.mark.parametrize("document", DOCUMENTS)
def test_documented_cpu_commands_run(document, tmp_path):
    for name in ("ds_configs", "hostfiles", "interbert"):
        (tmp_path / name).symlink_to(REPO / name)
    env = dict(os.environ)
    for key in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        env.pop(key, None)
    env.update(PATH=f"{Path(sys.executable).parent}{os.pathsep}{env['PATH']}", DS_ACCELERATOR="cpu",
               OMP_NUM_THREADS="1", PYTHONPATH=str(REPO))
    blocks = marked_blocks((REPO / "docs" / document).read_text())
    assert blocks
    for block in blocks:
        script = "set -euo pipefail\n" + "\n".join(shortened(command) for command in block)
        result = subprocess.run(["bash", "-c", script], cwd=tmp_path, env=env, capture_output=True, text=True,
                                timeout=600)
        assert result.returncode == 0, f"{document}:\n{script}\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}"
