"""Fixtures for the data tests (every sub-folder): the test vocabulary. The corpus they share,
`synth_corpus`, comes from tests/conftest.py; their helper modules from tests/helpers."""
from __future__ import annotations

import pytest

from interbert.data.text.tokenization import default_vocab_file


@pytest.fixture(scope="session")
def vocab_file() -> str:
    return default_vocab_file()
