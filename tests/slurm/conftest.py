"""The SLURM tests' helper modules on sys.path (the suite runs with --import-mode=importlib): this
folder's private_slurm.py and the training tests' training_test_helpers.py. The `corpus` fixture
comes from tests/conftest.py."""
from __future__ import annotations

import sys
from pathlib import Path

HERE = Path(__file__).parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent / "training"))
