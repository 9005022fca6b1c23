"""Bucketed pair scoring: every block holds one caption length and one region count; its
unpadded, unmasked scores equal the model's own padded, masked `itm_score` of the same pairs; the bf16 precision
stays close to fp32 and leaves the model untouched."""
from __future__ import annotations

import pytest
import torch

from interbert.data.retrieval.corpus import RetrievalCorpus
from interbert.evaluation.bucket_scoring import BucketScorer, length_groups, model_in_precision
from interbert.evaluation.full_retrieval import bucket_blocks, evaluate_full_retrieval, score_all_pairs, score_pair_list
from interbert.evaluation.pair_scoring import PairEmbedder, embed_in_chunks
from interbert.modeling.pretraining import INPUT_KEYS


@pytest.fixture(scope="module")
def corpus(ft_corpus):
    return RetrievalCorpus(ft_corpus / "features", ft_corpus / "captions.jsonl", split="train", max_regions=36)


@pytest.fixture(scope="module")
def embedded(corpus, tiny_model):
    scorer = PairEmbedder(tiny_model, torch.device("cpu"), torch.float32)
    texts = embed_in_chunks(scorer.embed_texts, corpus.text_batch, list(range(len(corpus))))
    images = embed_in_chunks(scorer.embed_images, corpus.image_batch, list(range(len(corpus.image_ids))))
    return scorer, texts, images


def test_length_groups_partition_the_rows_by_length():
    groups = length_groups(torch.tensor([3, 1, 3, 2, 1]))
    assert [(length, rows.tolist()) for length, rows in groups] == [(1, [1, 4]), (2, [3]), (3, [0, 2])]


def test_bucket_blocks_cover_every_pair_once_each_within_one_bucket(embedded):
    _, texts, images = embedded
    assert len(length_groups(texts.lengths)) > 1 and len(length_groups(images.lengths)) > 1
    covered = torch.zeros(texts.lengths.numel(), images.lengths.numel(), dtype=torch.long)
    for text_rows, image_rows in bucket_blocks(texts, images, pair_batch=7):
        assert text_rows.numel() * image_rows.numel() <= 7 or text_rows.numel() == 1
        assert texts.lengths[text_rows].unique().numel() == 1
        assert images.lengths[image_rows].unique().numel() == 1
        covered[text_rows[:, None], image_rows[None, :]] += 1
    assert torch.equal(covered, torch.ones_like(covered))


def test_unpadded_bucket_scores_equal_the_models_padded_masked_scores(embedded, corpus, tiny_model):
    _, texts, images = embedded
    buckets = BucketScorer(tiny_model, texts, images)
    unpadded = torch.full((texts.lengths.numel(), images.lengths.numel()), float("nan"))
    for text_rows, image_rows in bucket_blocks(texts, images, pair_batch=64):
        unpadded[text_rows[:, None], image_rows[None, :]] = buckets.score_grid(text_rows, image_rows)
    captions, images_count = unpadded.shape
    with torch.no_grad():
        padded = torch.stack([tiny_model.itm_score(**{key: value for key, value in corpus.pair_batch(
            [caption] * images_count, list(range(images_count))).items() if key in INPUT_KEYS})
            for caption in range(captions)])
    assert torch.allclose(unpadded, padded, atol=1e-6)


def test_pair_list_scores_equal_grid_scores(embedded, tiny_model):
    _, texts, images = embedded
    grid = score_all_pairs(embedded[0], texts, images, 16, collective=False)
    generator = torch.Generator().manual_seed(0)
    text_rows = torch.randint(0, texts.lengths.numel(), (40,), generator=generator)
    image_rows = torch.randint(0, images.lengths.numel(), (40,), generator=generator)
    listed = score_pair_list(BucketScorer(tiny_model, texts, images), text_rows, image_rows, pair_batch=5)
    assert torch.allclose(listed, grid[text_rows, image_rows], atol=1e-6)


def test_a_block_of_mixed_lengths_is_refused_with_the_lengths(embedded, tiny_model):
    _, texts, images = embedded
    short, long = int(texts.lengths.argmin()), int(texts.lengths.argmax())
    with pytest.raises(ValueError, match="one caption length and one region count"):
        BucketScorer(tiny_model, texts, images).score_grid(torch.tensor([short, long]), torch.tensor([0]))


def test_bf16_scores_stay_close_to_fp32_and_the_model_stays_fp32(corpus, tiny_model):
    exact = evaluate_full_retrieval(tiny_model, corpus, pair_batch=32)
    bf16 = evaluate_full_retrieval(tiny_model, corpus, pair_batch=32, precision="bf16")
    difference = (bf16.scores - exact.scores).abs().max()
    assert 0 < difference < 5e-3  # computed in bf16, within its rounding of probabilities near 0.5
    assert bf16.precision == "bf16" and exact.precision == "exact"
    assert all(p.dtype == torch.float32 for p in tiny_model.parameters())


def test_an_unknown_precision_is_refused_by_name(tiny_model):
    with pytest.raises(ValueError, match="precision 'fp8': expected one of exact, bf16"):
        model_in_precision(tiny_model, "fp8")
    assert model_in_precision(tiny_model, "exact") is tiny_model
    assert next(model_in_precision(tiny_model, "bf16").parameters()).dtype == torch.bfloat16
