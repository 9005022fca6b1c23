"""The training tests import their helper module (training_test_helpers.py) from here: the suite
runs with --import-mode=importlib, which puts no test folder on sys.path. The corpus fixture is
in tests/conftest.py."""
from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
