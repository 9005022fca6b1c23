"""Fixtures shared by the test folders: the synthetic corpora (one builder, tests/helpers/corpus.py,
each shape synthesised at most once per session) and a tiny model."""
from __future__ import annotations

import os
from pathlib import Path

import pytest

from tests.helpers.corpus import DATA, FINETUNING, TRAINING, CorpusShape, synthesize

# In-process runs of the entry points (the fine-tuning, evaluation and error tests) use DeepSpeed's CPU
# accelerator; subprocesses get the same from training_runs.subprocess_env.
os.environ.setdefault("DS_ACCELERATOR", "cpu")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


@pytest.fixture(scope="session")
def synthetic_corpus(tmp_path_factory):
    """synthetic_corpus(shape) -> the folder of the corpus of that shape (features/, captions.jsonl),
    synthesised the first time a test of the session asks for it, shared read-only after."""
    made: dict[CorpusShape, Path] = {}

    def corpus_of(shape: CorpusShape) -> Path:
        if shape not in made:
            made[shape] = synthesize(tmp_path_factory.mktemp(shape.name) / "corpus", shape)
        return made[shape]

    return corpus_of


@pytest.fixture(scope="session")
def corpus(synthetic_corpus) -> Path:
    """40 synthetic images (32 train, 4 val, 4 test), 5 captions each: the training runs' corpus."""
    return synthetic_corpus(TRAINING)


@pytest.fixture(scope="session")
def synth_corpus(synthetic_corpus) -> Path:
    """60 synthetic images (48 train, 6 val, 6 test), 5 captions each: the data tests' corpus."""
    return synthetic_corpus(DATA)


@pytest.fixture(scope="session")
def ft_corpus(synthetic_corpus) -> Path:
    """24 synthetic images (16 train, 4 val, 4 test), 3 captions each: the fine-tuning and retrieval
    scoring tests' corpus."""
    return synthetic_corpus(FINETUNING)


@pytest.fixture(scope="session")
def tiny_model():
    """A tiny InterBertForPretraining in evaluation mode (fixed seed)."""
    import torch

    from interbert.modeling import InterBertConfig, InterBertForPretraining

    torch.manual_seed(0)
    return InterBertForPretraining(InterBertConfig.from_preset("tiny")).eval()


def pytest_collection_modifyitems(config, items):
    """The files whose tests start the real launcher, mpirun or several hosts (marked slow) first, each
    file's tests in their order: `./run.sh test` hands whole files to two pytest-xdist workers in this
    order, and the long files first leave only short ones to balance the workers at the end."""
    items.sort(key=lambda item: item.get_closest_marker("slow") is None)
