"""Fixtures for the data tests: the test vocabulary and a tiny synthetic corpus."""
from __future__ import annotations

import sys
from pathlib import Path

import pytest

from interbert.data.ingest.synth import synthesize_corpus
from interbert.data.text.tokenization import default_vocab_file

# The suite runs with --import-mode=importlib, which puts no test folder on sys.path; the data
# tests import their helper module (data_test_helpers.py) from here.
sys.path.insert(0, str(Path(__file__).parent))


@pytest.fixture(scope="session")
def vocab_file() -> str:
    return default_vocab_file()


@pytest.fixture(scope="session")
def synth_corpus(tmp_path_factory):
    """A 60-image synthetic corpus (features/, captions.jsonl), shared read-only by the tests."""
    out = tmp_path_factory.mktemp("synth") / "corpus"
    synthesize_corpus(out, 60, seed=3, progress=False)
    return out

