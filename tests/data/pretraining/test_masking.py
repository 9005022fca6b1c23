"""MSM, MRM, ITM and the Table-2 baselines: the statistics the paper and docs/data.md specify,
checked on whole batches; the draws behind them; and the dataset's use of both."""
from __future__ import annotations

import numpy as np
import pytest

from interbert.data.pretraining.dataset import PretrainingDataset
from interbert.data.pretraining.itm import CaptionsByImage, draw_itm_captions
from interbert.data.pretraining.mrm import mask_regions_mom, mask_regions_mrm
from interbert.data.pretraining.msm import draw_segments, replace_masked, segment_mask, token_mask
from interbert.data.pretraining.sample_draws import sample_uniforms
from interbert.data.pretraining.tasks import PretrainingTasks

MASK_ID = 103
POOL = np.arange(1000, 30000)


def uniforms(*shape, salt: int = 0) -> np.ndarray:
    return np.random.default_rng(salt).random(shape)


def captions(count: int, num_words: int, pieces_per_word: int = 2) -> tuple:
    """``count`` copies of [CLS] w0 w0 w1 w1 ... [SEP]: ids and word ids, count×T."""
    words = np.repeat(np.arange(num_words), pieces_per_word)
    ids = np.concatenate([[101], 2000 + np.arange(words.size), [102]])
    word_ids = np.concatenate([[-1], words, [-1]])
    return np.tile(ids, (count, 1)), np.tile(word_ids, (count, 1))


def iou_loop(a, b) -> float:
    iw = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    ih = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = iw * ih
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / union


def test_msm_anchor_rate_is_one_word_in_ten():
    words, draws = 30, 20000
    anchors, _ = draw_segments(np.full(draws, words), uniforms(draws, words), uniforms(draws, salt=1),
                               uniforms(draws, words, salt=2))
    expected = 0.1 + 0.9 ** words / words  # captions that draw no anchor get exactly one
    assert abs(anchors.sum() / (words * draws) - expected) < 0.003


def test_msm_span_lengths_are_uniform_over_one_to_three_words():
    anchors, extra = draw_segments(np.full(5000, 30), uniforms(5000, 30), uniforms(5000, salt=1),
                                   uniforms(5000, 30, salt=2))
    counts = np.bincount(extra[anchors], minlength=3) / anchors.sum()
    assert counts.size == 3 and np.all(np.abs(counts - 1 / 3) < 0.02)


def test_msm_masks_every_piece_of_exactly_the_spanned_words():
    ids, word_ids = captions(200, 12, pieces_per_word=2)
    u_anchor, u_fallback, u_extra = uniforms(*ids.shape), uniforms(200, salt=1), uniforms(*ids.shape, salt=2)
    anchors, extra = draw_segments(np.full(200, 12), u_anchor, u_fallback, u_extra)
    masked = segment_mask(word_ids, u_anchor, u_fallback, u_extra)
    for row in range(200):
        spanned = {w for a in np.flatnonzero(anchors[row]) for w in range(a, min(a + extra[row, a] + 1, 12))}
        assert {int(word_ids[row, p]) for p in np.flatnonzero(masked[row])} == spanned
        assert all(masked[row][word_ids[row] == w].all() for w in spanned)


def test_msm_caption_that_draws_no_anchor_gets_one():
    ids, word_ids = captions(100, 5, pieces_per_word=1)
    masked = segment_mask(word_ids, uniforms(*ids.shape), uniforms(100, salt=1), uniforms(*ids.shape, salt=2),
                          anchor_prob=0.0)
    assert ((masked.sum(axis=1) >= 1) & (masked.sum(axis=1) <= 3)).all()


def test_msm_never_masks_cls_and_sep_nor_padding():
    ids, word_ids = captions(500, 3, pieces_per_word=1)
    word_ids[:250, 3:] = -1  # half the captions are one word long, then padding
    masked = segment_mask(word_ids, uniforms(*ids.shape), uniforms(500, salt=1), uniforms(*ids.shape, salt=2),
                          anchor_prob=0.9)
    inputs, labels = replace_masked(ids, masked, uniforms(*ids.shape, salt=3), uniforms(*ids.shape, salt=4),
                                    MASK_ID, POOL)
    assert not masked[:, [0, -1]].any() and not masked[:250, 3:].any() and masked[:250, 1:3].any()
    assert (labels[:, [0, -1]] == -100).all() and (inputs[:, 0] == 101).all() and (inputs[:, -1] == 102).all()


def test_masked_tokens_are_mask_80_random_10_unchanged_10_percent():
    ids, word_ids = captions(3000, 30, pieces_per_word=1)
    masked = segment_mask(word_ids, uniforms(*ids.shape), uniforms(3000, salt=1), uniforms(*ids.shape, salt=2))
    inputs, labels = replace_masked(ids, masked, uniforms(*ids.shape, salt=3), uniforms(*ids.shape, salt=4),
                                    MASK_ID, POOL)
    assert (labels[masked] == ids[masked]).all() and (labels[~masked] == -100).all()
    assert (inputs[~masked] == ids[~masked]).all()
    became = np.where(inputs[masked] == MASK_ID, 0, np.where(inputs[masked] == labels[masked], 2, 1))
    shares = np.bincount(became, minlength=3) / became.size
    np.testing.assert_allclose(shares, [0.8, 0.1, 0.1], atol=0.015)
    assert np.isin(inputs[masked][became == 1], POOL).all()


def test_mlm_baseline_masks_fifteen_percent_of_word_pieces():
    ids, word_ids = captions(3000, 20, pieces_per_word=2)
    masked = token_mask(word_ids, uniforms(*ids.shape), uniforms(3000, salt=1))
    assert abs(masked.sum(axis=1).mean() / 40 - 0.15) < 0.005
    assert not masked[:, [0, -1]].any()


def test_mlm_caption_that_draws_no_piece_gets_one_real_piece():
    ids, word_ids = captions(400, 6, pieces_per_word=1)
    word_ids[:200, 4:] = -1  # three real pieces, then padding
    masked = token_mask(word_ids, uniforms(*ids.shape), uniforms(400, salt=1), token_prob=0.0)
    assert (masked.sum(axis=1) == 1).all() and (masked & (word_ids >= 0)).sum() == 400
    assert set(np.flatnonzero(masked[:200])[:] % ids.shape[1]) == {1, 2, 3}


def random_boxes(images: int, regions: int, salt: int) -> np.ndarray:
    rng = np.random.default_rng(salt)
    xy = rng.uniform(0, 100, (images, regions, 2))
    return np.concatenate([xy, xy + rng.uniform(10, 60, (images, regions, 2))], axis=2).astype(np.float32)


def test_mrm_masks_anchors_and_every_region_with_iou_above_0_4_never_padding():
    boxes = random_boxes(100, 20, salt=1000)
    counts = np.random.default_rng(1).integers(12, 21, 100)
    real = np.arange(20) < counts[:, None]
    boxes[~real] = 0  # padding rows, as a batch holds them
    u = uniforms(100, 20)
    masked = mask_regions_mrm(boxes, real, u, anchor_prob=0.2)
    for image in range(100):
        n = counts[image]
        anchors = np.flatnonzero(u[image, :n] < 0.2)
        expected = {j for a in anchors for j in range(n) if j == a or iou_loop(boxes[image, a], boxes[image, j]) > 0.4}
        assert set(np.flatnonzero(masked[image])) == expected


def test_mrm_anchor_rate_is_one_region_in_ten_without_overlaps():
    boxes = np.tile(np.array([[i * 10, 0, i * 10 + 5, 5] for i in range(36)], dtype=np.float32), (4000, 1, 1))
    masked = mask_regions_mrm(boxes, np.ones((4000, 36), bool), uniforms(4000, 36))
    assert abs(masked.mean() - 0.1) < 0.005


def test_mom_baseline_masks_fifteen_percent_of_regions():
    real = np.arange(36) < 30
    masked = mask_regions_mom(np.tile(real, (4000, 1)), uniforms(4000, 36))
    assert abs(masked[:, :30].mean() - 0.15) < 0.005 and not masked[:, 30:].any()


def test_itm_gives_half_the_pairs_a_caption_of_another_image_uniformly():
    caption_image = np.repeat(np.arange(50), 5)
    groups = CaptionsByImage(caption_image)
    indices = np.arange(4000) % 250
    chosen, labels = draw_itm_captions(indices, groups, uniforms(4000), uniforms(4000, salt=1))
    assert ((caption_image[chosen] == caption_image[indices]) == (labels == 1)).all()
    assert (chosen[labels == 1] == indices[labels == 1]).all()
    assert abs(labels.mean() - 0.5) < 0.03
    # A mismatched caption is any caption of the other 49 images, equally likely.
    chosen, _ = draw_itm_captions(np.full(49000, 7), groups, np.zeros(49000), uniforms(49000, salt=2))
    counts = np.bincount(chosen, minlength=250)
    assert (counts[5:10] == 0).all() and (counts[caption_image != 1] > 0).all()
    assert np.abs(counts[caption_image != 1] / 200 - 1).max() < 0.35  # ± 5 standard deviations


def test_sample_uniforms_are_uniform_independent_and_a_function_of_the_triple():
    u = sample_uniforms(3, 1, np.arange(20000), 179)
    assert u.min() >= 0 and u.max() < 1 and abs(u.mean() - 0.5) < 0.001
    np.testing.assert_allclose(np.histogram(u, bins=10, range=(0, 1))[0] / u.size, 0.1, atol=0.001)
    assert abs(np.corrcoef(u[:, 0], u[:, 1])[0, 1]) < 0.03 and abs(np.corrcoef(u[:-1, 0], u[1:, 0])[0, 1]) < 0.03
    np.testing.assert_array_equal(sample_uniforms(3, 1, np.array([19999, 5]), 179), u[[19999, 5]])
    for other in (sample_uniforms(4, 1, np.arange(100), 179), sample_uniforms(3, 2, np.arange(100), 179)):
        assert (other == u[:100]).mean() < 0.001


@pytest.fixture(scope="module")
def dataset(synth_corpus, vocab_file):
    return PretrainingDataset(synth_corpus / "features", synth_corpus / "captions.jsonl", vocab_file, seed=5,
                              tasks=PretrainingTasks(mrm_anchor_prob=0.3))


def test_global_token_is_the_mean_of_the_features_as_fed(dataset):
    for index in range(20):
        sample = dataset[index]
        features = sample["region_features"].astype(np.float32)  # float16 in the batch
        # The mean is computed in float32 and rounded to float16 (relative error < 1e-3).
        np.testing.assert_allclose(features[0], features[1:].mean(axis=0), rtol=2e-3, atol=1e-4)
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


def test_task_rates_through_the_dataset(dataset):
    """The dataset's draw layout gives each task its own independent uniforms."""
    itm, text_masked, text_real, regions_masked, regions_real = [], 0, 0, 0, 0
    for epoch in range(4):
        dataset.set_epoch(epoch)
        batch, _, _ = dataset.__getitems__(np.arange(len(dataset)))
        itm.append(batch["itm_labels"].numpy())
        text_masked += int((batch["msm_labels"] != -100).sum())
        text_real += int(batch["text_mask"].sum()) - 2 * len(dataset)
        regions_masked += int((batch["mrm_labels"] != -100).sum())
        regions_real += int(batch["region_mask"].sum()) - len(dataset)
    dataset.set_epoch(0)
    assert abs(np.concatenate(itm).mean() - 0.5) < 0.03
    assert 0.1 < text_masked / text_real < 0.5  # one word in ten starts a 1-3 word span, at least one per caption
    assert 0.3 < regions_masked / regions_real < 0.8  # anchors at 0.3, plus their overlapping copies


def test_same_seed_epoch_index_gives_the_identical_sample_in_any_batch(dataset, synth_corpus, vocab_file):
    twin = PretrainingDataset(synth_corpus / "features", synth_corpus / "captions.jsonl", vocab_file, seed=5,
                              tasks=PretrainingTasks(mrm_anchor_prob=0.3))
    dataset.set_epoch(3)
    twin.set_epoch(3)
    together, _, _ = twin.__getitems__([100, 7, 0])
    for row, index in enumerate((100, 7, 0)):
        first, second = dataset[index], twin[index]
        assert first.keys() == second.keys()
        for key in first:
            np.testing.assert_array_equal(first[key], second[key])
        t, r = len(first["input_ids"]), len(first["region_mask"])
        for key in first:
            length = t if key in ("input_ids", "token_type_ids", "text_mask", "msm_labels") else r
            np.testing.assert_array_equal(first[key], together[key][row][:length].numpy() if first[key].ndim
                                          else together[key][row].numpy())
    twin.set_epoch(4)
    assert any(not np.array_equal(dataset[i]["input_ids"], twin[i]["input_ids"]) for i in range(10))
    dataset.set_epoch(0)
