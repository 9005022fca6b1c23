"""Fixtures for the training tests: one small synthetic corpus per session."""
from __future__ import annotations

import sys
from pathlib import Path

import pytest

# The suite runs with --import-mode=importlib, which puts no test folder on sys.path; the
# training tests import their helper module (training_test_helpers.py) from here.
sys.path.insert(0, str(Path(__file__).parent))


@pytest.fixture(scope="session")
def corpus(tmp_path_factory) -> Path:
    """40 synthetic images (32 train, 4 val, 4 test), 5 captions each."""
    from interbert.data.synth import synthesize_corpus

    root = tmp_path_factory.mktemp("corpus") / "synth"
    synthesize_corpus(root, num_images=40, seed=0, val_images=4, test_images=4, progress=False)
    return root
