"""Fixtures of the SLURM tests: this folder's and the training tests' helper modules on sys.path
(the suite runs with --import-mode=importlib), and one small synthetic corpus per session."""
from __future__ import annotations

import sys
from pathlib import Path

import pytest

HERE = Path(__file__).parent
sys.path.insert(0, str(HERE))  # private_slurm.py
sys.path.insert(0, str(HERE.parent / "training"))  # training_test_helpers.py


@pytest.fixture(scope="session")
def corpus(tmp_path_factory) -> Path:
    """40 synthetic images (32 train, 4 val, 4 test), 5 captions each."""
    from interbert.data.synth import synthesize_corpus

    root = tmp_path_factory.mktemp("corpus") / "synth"
    synthesize_corpus(root, num_images=40, seed=0, val_images=4, test_images=4, progress=False)
    return root
