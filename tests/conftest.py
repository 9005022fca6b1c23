"""Fixtures shared by the training, several-hosts and SLURM tests."""
from __future__ import annotations

from pathlib import Path

import pytest


@pytest.fixture(scope="session")
def corpus(tmp_path_factory) -> Path:
    """40 synthetic images (32 train, 4 val, 4 test), 5 captions each."""
    from interbert.data.ingest.synth import synthesize_corpus

    root = tmp_path_factory.mktemp("corpus") / "synth"
    synthesize_corpus(root, num_images=40, seed=0, val_images=4, test_images=4, progress=False)
    return root
