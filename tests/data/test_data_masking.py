"""MSM, MRM, ITM and the Table-2 baselines: the statistics the paper and design notes specify."""
from __future__ import annotations

import numpy as np
import pytest

from interbert.data.itm import draw_itm_caption
from interbert.data.mrm import mask_regions_mom, mask_regions_mrm
from interbert.data.msm import draw_segments, mask_segments, mask_tokens_mlm
from interbert.data.pretraining_dataset import PretrainingDataset, PretrainingTasks

MASK_ID = 103
POOL = np.arange(1000, 30000)


def rngs(count: int, salt: int = 0):
    return (np.random.Generator(np.random.PCG64([salt, i])) for i in range(count))


def caption(num_words: int, pieces_per_word: int = 2) -> tuple:
    """[CLS] w0 w0 w1 w1 ... [SEP]: ids and word ids."""
    words = np.repeat(np.arange(num_words), pieces_per_word)
    ids = np.concatenate([[101], 2000 + np.arange(words.size), [102]]).astype(np.int32)
    return ids, np.concatenate([[-1], words, [-1]]).astype(np.int16)


def iou_loop(a, b) -> float:
    iw = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    ih = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = iw * ih
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / union


def test_msm_anchor_rate_is_one_word_in_ten():
    words, draws = 30, 20000
    anchors = sum(draw_segments(words, rng)[0].size for rng in rngs(draws))
    expected = 0.1 + 0.9 ** words / words  # captions that draw no anchor get exactly one
    assert abs(anchors / (words * draws) - expected) < 0.003


def test_msm_span_lengths_are_uniform_over_one_to_three_words():
    extra = np.concatenate([draw_segments(30, rng)[1] for rng in rngs(5000)])
    counts = np.bincount(extra, minlength=3) / extra.size
    assert counts.size == 3 and np.all(np.abs(counts - 1 / 3) < 0.02)


def test_msm_masks_every_piece_of_exactly_the_spanned_words():
    ids, word_ids = caption(12, pieces_per_word=2)
    for seed in range(200):
        anchors, extra = draw_segments(12, np.random.Generator(np.random.PCG64([seed])))
        spanned = {w for a, e in zip(anchors, extra) for w in range(a, min(a + e + 1, 12))}
        _, labels = mask_segments(ids, word_ids, np.random.Generator(np.random.PCG64([seed])), MASK_ID, POOL)
        masked_words = {int(word_ids[p]) for p in np.flatnonzero(labels != -100)}
        assert masked_words == spanned
        assert all((labels[word_ids == w] != -100).all() for w in spanned)


def test_msm_caption_that_draws_no_anchor_gets_one():
    ids, word_ids = caption(5, pieces_per_word=1)
    for rng in rngs(100):
        _, labels = mask_segments(ids, word_ids, rng, MASK_ID, POOL, anchor_prob=0.0)
        assert 1 <= (labels != -100).sum() <= 3


def test_msm_never_masks_cls_and_sep():
    ids, word_ids = caption(3, pieces_per_word=1)
    for rng in rngs(500):
        inputs, labels = mask_segments(ids, word_ids, rng, MASK_ID, POOL, anchor_prob=0.9)
        assert labels[0] == labels[-1] == -100 and inputs[0] == 101 and inputs[-1] == 102


def test_masked_tokens_are_mask_80_random_10_unchanged_10_percent():
    ids, word_ids = caption(30, pieces_per_word=1)
    became = []
    for rng in rngs(3000):
        inputs, labels = mask_segments(ids, word_ids, rng, MASK_ID, POOL)
        masked = labels != -100
        became.append(np.where(inputs[masked] == MASK_ID, 0, np.where(inputs[masked] == labels[masked], 2, 1)))
    shares = np.bincount(np.concatenate(became), minlength=3) / np.concatenate(became).size
    np.testing.assert_allclose(shares, [0.8, 0.1, 0.1], atol=0.015)


def test_mlm_baseline_masks_fifteen_percent_of_word_pieces():
    ids, word_ids = caption(20, pieces_per_word=2)
    rate = np.mean([(mask_tokens_mlm(ids, word_ids, rng, MASK_ID, POOL)[1] != -100).sum() / 40
                    for rng in rngs(3000)])
    assert abs(rate - 0.15) < 0.005


def test_mrm_masks_anchors_and_every_region_with_iou_above_0_4():
    for seed in range(100):
        rng = np.random.default_rng(seed + 1000)
        xy = rng.uniform(0, 100, (20, 2))
        boxes = np.concatenate([xy, xy + rng.uniform(10, 60, (20, 2))], axis=1).astype(np.float32)
        masked = mask_regions_mrm(boxes, np.random.Generator(np.random.PCG64([seed])), anchor_prob=0.2)
        anchors = np.random.Generator(np.random.PCG64([seed])).random(20) < 0.2
        expected = {j for a in np.flatnonzero(anchors) for j in range(20)
                    if j == a or iou_loop(boxes[a], boxes[j]) > 0.4}
        assert set(np.flatnonzero(masked)) == expected


def test_mrm_anchor_rate_is_one_region_in_ten_without_overlaps():
    boxes = np.array([[i * 10, 0, i * 10 + 5, 5] for i in range(36)], dtype=np.float32)  # disjoint
    rate = np.mean([mask_regions_mrm(boxes, rng).mean() for rng in rngs(4000)])
    assert abs(rate - 0.1) < 0.005


def test_mom_baseline_masks_fifteen_percent_of_regions():
    rate = np.mean([mask_regions_mom(36, rng).mean() for rng in rngs(4000)])
    assert abs(rate - 0.15) < 0.005


def test_itm_gives_half_the_pairs_a_caption_of_another_image():
    caption_image = np.repeat(np.arange(50), 5)
    labels = []
    for index, rng in enumerate(rngs(4000)):
        chosen, label = draw_itm_caption(index % 250, caption_image, rng)
        assert (caption_image[chosen] == caption_image[index % 250]) == (label == 1)
        labels.append(label)
    assert abs(np.mean(labels) - 0.5) < 0.03


@pytest.fixture(scope="module")
def dataset(synth_corpus, vocab_file):
    return PretrainingDataset(synth_corpus / "features", synth_corpus / "captions.jsonl", vocab_file, seed=5,
                              tasks=PretrainingTasks(mrm_anchor_prob=0.3))


def test_global_token_is_the_mean_of_the_features_as_fed(dataset):
    for index in range(20):
        sample = dataset[index]
        features = sample["region_features"]
        np.testing.assert_allclose(features[0], features[1:].mean(axis=0), rtol=1e-5, atol=1e-6)
        assert sample["mrm_labels"][0] == -100
        np.testing.assert_array_equal(sample["region_locations"][0], [0, 0, 1, 1, 1])


def test_masked_regions_have_zero_features_and_detector_class_targets(dataset):
    record_count = 0
    for index in range(40):
        sample = dataset[index]
        masked = np.flatnonzero(sample["mrm_labels"] != -100)
        assert (sample["region_features"][masked] == 0).all()
        assert (sample["region_features"][np.setdiff1d(np.arange(1, len(sample["mrm_labels"])), masked)] != 0).any()
        record = dataset.store.get(dataset.image_ids[dataset.caption_image[index]])
        assert set(sample["mrm_labels"][masked]) <= set(record.labels.tolist())
        record_count += masked.size
    assert record_count > 0


def test_same_seed_epoch_index_gives_the_identical_sample(dataset, synth_corpus, vocab_file):
    twin = PretrainingDataset(synth_corpus / "features", synth_corpus / "captions.jsonl", vocab_file, seed=5,
                              tasks=PretrainingTasks(mrm_anchor_prob=0.3))
    dataset.set_epoch(3)
    twin.set_epoch(3)
    for index in (0, 7, 100):
        first, second = dataset[index], twin[index]
        assert first.keys() == second.keys()
        for key in first:
            np.testing.assert_array_equal(first[key], second[key])
    twin.set_epoch(4)
    assert any(not np.array_equal(dataset[i]["input_ids"], twin[i]["input_ids"]) for i in range(10))
    dataset.set_epoch(0)
