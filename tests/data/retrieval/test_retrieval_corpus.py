"""Retrieval evaluation input: captions × images, unmasked, images decoded once."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from interbert.data.dataset_error import DatasetError
from interbert.data.retrieval.corpus import RetrievalCorpus


@pytest.fixture(scope="module")
def corpus(synth_corpus, vocab_file):
    return RetrievalCorpus(synth_corpus / "features", synth_corpus / "captions.jsonl", vocab_file, split="test")


def test_corpus_lists_the_split_images_and_their_captions(corpus):
    assert len(corpus.image_ids) == 6 and len(corpus) == 30
    assert np.bincount(corpus.caption_to_image).tolist() == [5] * 6


def test_pair_batch_gives_unmasked_model_inputs(corpus):
    batch = corpus.pair_batch([0, 7, 29], [5, 0, 2])
    assert list(batch) == ["input_ids", "token_type_ids", "text_mask", "region_features", "region_locations",
                           "region_mask"]
    assert not (batch["input_ids"] == 103).any()  # no [MASK]
    first_image = corpus.store.get(corpus.image_ids[5])
    n = first_image.num_regions
    assert int(batch["region_mask"][0].sum()) == n + 1
    features = batch["region_features"][0, 1:n + 1]
    assert (features != 0).any(dim=1).all()  # no region zeroed
    torch.testing.assert_close(batch["region_features"][0, 0], features.mean(0), atol=2e-3, rtol=1e-3)


def test_images_are_decoded_once(corpus):
    corpus.pair_batch([0], [1])
    cached = corpus.image(1)
    corpus.pair_batch([3], [1])
    assert corpus.image(1) is cached


def test_max_images_limits_the_gallery(synth_corpus, vocab_file):
    small = RetrievalCorpus(synth_corpus / "features", synth_corpus / "captions.jsonl", vocab_file,
                            split="val", max_images=2)
    assert len(small.image_ids) == 2 and len(small) == 10


def test_missing_split_is_an_error(synth_corpus, vocab_file):
    with pytest.raises(DatasetError, match="no captions in split 'dev'"):
        RetrievalCorpus(synth_corpus / "features", synth_corpus / "captions.jsonl", vocab_file, split="dev")
