"""The pretraining dataset's batches: the batch contract, region selection, bad input."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from interbert.data.dataset_error import DatasetError
from interbert.data.loading.loader import build_loader
from interbert.data.pretraining.dataset import PretrainingDataset
from interbert.data.pretraining.tasks import PretrainingTasks
from interbert.data.store.errors import CorruptRecordError
from interbert.data.store.record_format import encode_record
from tests.helpers.data import make_record, put_raw, write_manifest_lines, write_store

BATCH_KEYS = ["input_ids", "token_type_ids", "text_mask", "region_features", "region_locations", "region_mask",
              "msm_labels", "mrm_labels", "itm_labels", "msm_positions", "mrm_positions"]


def corpus(tmp_path, records, entries):
    store = write_store(tmp_path / "store", records)
    return store, write_manifest_lines(tmp_path / "captions.jsonl", entries)


def entry(image_id, caption, split="train"):
    return {"image_id": image_id, "caption": caption, "split": split, "source": "test"}


def test_a_batch_is_exactly_the_batch_contract(synth_corpus, vocab_file):
    dataset = PretrainingDataset(synth_corpus / "features", synth_corpus / "captions.jsonl", vocab_file)
    samples = [dataset[i] for i in range(6)]
    batch, corrupt, failure = dataset.__getitems__(range(6))
    assert list(batch) == BATCH_KEYS and corrupt == [] and failure is None
    b, t = batch["input_ids"].shape
    r = batch["region_features"].shape[1]
    assert (b, t, r) == (6, max(len(s["input_ids"]) for s in samples), max(len(s["mrm_labels"]) for s in samples))
    expected = {"input_ids": ((b, t), torch.long), "token_type_ids": ((b, t), torch.long),
                "text_mask": ((b, t), torch.bool), "region_features": ((b, r, 2048), torch.float16),
                "region_locations": ((b, r, 5), torch.float32), "region_mask": ((b, r), torch.bool),
                "msm_labels": ((b, t), torch.long), "mrm_labels": ((b, r), torch.long),
                "itm_labels": ((b,), torch.long),
                "msm_positions": ((int((batch["msm_labels"] != -100).sum()),), torch.long),
                "mrm_positions": ((int(((batch["mrm_labels"] != -100) & (batch["itm_labels"] == 1)[:, None]).sum()),),
                                  torch.long)}
    assert {k: (tuple(v.shape), v.dtype) for k, v in batch.items()} == expected
    lengths = batch["text_mask"].sum(1)
    assert lengths.tolist() == [len(s["input_ids"]) for s in samples]
    padding = ~batch["text_mask"]
    assert (batch["input_ids"][padding] == 0).all() and (batch["msm_labels"][padding] == -100).all()
    assert (batch["region_features"][~batch["region_mask"]] == 0).all()
    for row, sample in enumerate(samples):  # a batch pads its samples and changes nothing else
        for key, value in sample.items():
            padded = batch[key][row].numpy()
            np.testing.assert_array_equal(padded[tuple(slice(0, n) for n in value.shape)], value)


def test_region_locations_follow_the_five_number_convention(tmp_path, vocab_file):
    record = make_record("a", num_regions=3)
    store, manifest = corpus(tmp_path, [record, make_record("b")], [entry("a", "a dog"), entry("b", "a cat")])
    dataset = PretrainingDataset(store, manifest, vocab_file, tasks=PretrainingTasks(itm_negative_prob=0.0))
    locations = dataset[0]["region_locations"][1:]
    x1, y1, x2, y2 = record.boxes.T / np.array([[640], [480], [640], [480]])
    np.testing.assert_allclose(locations, np.stack([x1, y1, x2, y2, (x2 - x1) * (y2 - y1)], 1), rtol=1e-6)


def test_at_most_max_regions_are_kept_by_detector_confidence(tmp_path, vocab_file):
    record = make_record("a", num_regions=10)
    store, manifest = corpus(tmp_path, [record, make_record("b")], [entry("a", "a dog"), entry("b", "a cat")])
    tasks = PretrainingTasks(itm_negative_prob=0.0, mrm_anchor_prob=0.0)
    sample = PretrainingDataset(store, manifest, vocab_file, max_regions=4, tasks=tasks)[0]
    keep = np.argsort(-record.confidences)[:4]
    assert sample["region_features"].shape == (5, 2048)
    np.testing.assert_array_equal(sample["region_features"][1:], record.features[keep].astype(np.float16))


def test_over_long_captions_are_truncated_and_counted(tmp_path, vocab_file):
    store, manifest = corpus(tmp_path, [make_record("a"), make_record("b")],
                             [entry("a", "a dog " * 30), entry("b", "a cat")])
    dataset = PretrainingDataset(store, manifest, vocab_file, max_text_len=12,
                                 tasks=PretrainingTasks(itm_negative_prob=0.0))  # sample 0 keeps its caption
    assert dataset.truncated == 1 and len(dataset) == 2
    assert len(dataset[0]["input_ids"]) == 12 and dataset[0]["input_ids"][-1] == 102


def test_empty_caption_is_a_counted_skip_or_strict_error(tmp_path, vocab_file):
    store, manifest = corpus(tmp_path, [make_record("a"), make_record("b")],
                             [entry("a", "a dog"), entry("a", "   "), entry("b", "a cat")])
    dataset = PretrainingDataset(store, manifest, vocab_file)
    assert len(dataset) == 2 and dataset.skipped == {"empty caption": 1}
    with pytest.raises(DatasetError, match=r"captions\.jsonl:2: empty caption"):
        PretrainingDataset(store, manifest, vocab_file, strict=True)


def test_caption_of_a_missing_image_is_a_counted_skip_or_strict_error(tmp_path, vocab_file):
    store, manifest = corpus(tmp_path, [make_record("a"), make_record("b")],
                             [entry("a", "a dog"), entry("b", "a cat"), entry("zzz", "a ghost")])
    dataset = PretrainingDataset(store, manifest, vocab_file)
    assert len(dataset) == 2 and dataset.skipped == {"image missing from store": 1}
    with pytest.raises(DatasetError, match=r"captions\.jsonl:3: image 'zzz' is not in feature store"):
        PretrainingDataset(store, manifest, vocab_file, strict=True)


def test_split_filter_keeps_only_that_split(synth_corpus, vocab_file):
    test = PretrainingDataset(synth_corpus / "features", synth_corpus / "captions.jsonl", vocab_file, split="test")
    assert len(test) == 6 * 5 and len(test.image_ids) == 6


def test_corrupt_record_met_during_training_names_its_key(tmp_path, vocab_file):
    store, manifest = corpus(tmp_path, [make_record("a"), make_record("b")], [entry("a", "a dog"), entry("b", "a cat")])
    put_raw(store, "a", encode_record(make_record("a"))[:3000])
    dataset = PretrainingDataset(store, manifest, vocab_file, tasks=PretrainingTasks(itm_negative_prob=0.0))
    with pytest.raises(CorruptRecordError, match=r"record 'a' is corrupt"):
        dataset[0]


@pytest.mark.parametrize("workers", [0, 1])
def test_loader_stops_with_one_line_or_counts_the_skip(tmp_path, vocab_file, workers):
    records = [make_record(str(i), seed=i) for i in range(4)]
    store, manifest = corpus(tmp_path, records, [entry(str(i), f"a dog number {i}") for i in range(4)])
    put_raw(store, "2", encode_record(records[2])[:3000])
    tasks = PretrainingTasks(itm_negative_prob=0.0)
    loader = build_loader(PretrainingDataset(store, manifest, vocab_file, tasks=tasks), batch_size=4,
                                      num_workers=workers, shuffle=False)
    with pytest.raises(CorruptRecordError) as caught:
        next(iter(loader))
    assert str(caught.value).startswith(f"feature store {store}: record '2' is corrupt")
    assert "Traceback" not in str(caught.value) and "\n" not in str(caught.value)

    dataset = PretrainingDataset(store, manifest, vocab_file, tasks=tasks, skip_corrupt=True)
    loader = build_loader(dataset, batch_size=4, num_workers=workers, shuffle=False)
    batches = list(loader)
    assert [b["itm_labels"].shape[0] for b in batches] == [3]
    assert dataset.skipped["corrupt record"] == 1 and loader.sampler.consumed == 4


def test_soft_labels_carry_the_class_distribution_of_masked_regions(tmp_path, vocab_file):
    records = [make_record("a", num_regions=8, class_probs=True), make_record("b", class_probs=True)]
    store, manifest = corpus(tmp_path, records, [entry("a", "a dog"), entry("b", "a cat")])
    tasks = PretrainingTasks(mrm_soft_labels=True, mrm_anchor_prob=0.5, itm_negative_prob=0.0)
    batch, _, _ = PretrainingDataset(store, manifest, vocab_file, tasks=tasks).__getitems__([0])
    soft, labels = batch["mrm_soft_labels"], batch["mrm_labels"]
    assert soft.shape == (1, 9, 1601) and soft.dtype == torch.float16  # as stored
    masked = labels[0] != -100
    assert masked.any()
    torch.testing.assert_close(soft[0][masked].float().sum(-1), torch.ones(int(masked.sum())), atol=2e-2, rtol=0)
    assert (soft[0][~masked] == 0).all()
    rows = np.flatnonzero(masked[1:].numpy())  # 8 regions: all kept, in stored order
    np.testing.assert_array_equal(soft[0][1:][rows].numpy(), records[0].class_probs[rows].astype(np.float16))


def test_soft_labels_without_class_distributions_in_the_store_is_an_error(tmp_path, vocab_file):
    store, manifest = corpus(tmp_path, [make_record("a"), make_record("b")], [entry("a", "a dog"), entry("b", "b")])
    with pytest.raises(DatasetError, match="holds no class distributions"):
        PretrainingDataset(store, manifest, vocab_file, tasks=PretrainingTasks(mrm_soft_labels=True))


def test_mismatched_pairs_can_be_left_unmasked(synth_corpus, vocab_file):
    tasks = PretrainingTasks(itm_negative_prob=1.0, mask_mismatched_pairs=False)
    dataset = PretrainingDataset(synth_corpus / "features", synth_corpus / "captions.jsonl", vocab_file, tasks=tasks)
    sample = dataset[0]
    assert sample["itm_labels"] == 0
    assert (sample["msm_labels"] == -100).all() and (sample["mrm_labels"] == -100).all()


def test_lines_of_a_misspelt_split_are_counted_and_named(tmp_path, vocab_file, caplog):
    import logging

    store, manifest = corpus(tmp_path, [make_record("a"), make_record("b")],
                             [entry("a", "a dog"), entry("b", "a cat"), entry("b", "a cat again", split="trian")])
    with caplog.at_level(logging.WARNING, logger="interbert.data"):
        dataset = PretrainingDataset(store, manifest, vocab_file)
    assert len(dataset) == 2 and dataset.other_splits == {"trian": 1}
    assert "manifest lines not used: splits 'trian' (1 lines) are not one of train, val, test, restval" in caplog.text


def test_positions_name_the_targets_of_the_batch_and_mrm_only_on_matched_pairs(synth_corpus, vocab_file):
    """The heads gather MSM and MRM rows by these flat indices instead of a boolean mask on the device."""
    dataset = PretrainingDataset(synth_corpus / "features", synth_corpus / "captions.jsonl", vocab_file)
    batch, _, _ = dataset.__getitems__(range(16))
    msm = batch["msm_labels"].flatten()
    assert batch["msm_positions"].tolist() == torch.nonzero(msm != -100).squeeze(1).tolist()
    matched = (batch["itm_labels"] == 1)[:, None].expand_as(batch["mrm_labels"]).flatten()
    mrm = batch["mrm_labels"].flatten()
    assert batch["mrm_positions"].tolist() == torch.nonzero((mrm != -100) & matched).squeeze(1).tolist()
    assert (~matched).any() and ((mrm != -100) & ~matched).any()  # mismatched pairs were masked, then left out
    everything = PretrainingDataset(synth_corpus / "features", synth_corpus / "captions.jsonl", vocab_file,
                                    tasks=PretrainingTasks(mrm_matched_only=False)).__getitems__(range(16))[0]
    assert everything["mrm_positions"].tolist() == torch.nonzero(everything["mrm_labels"].flatten() != -100
                                                                 ).squeeze(1).tolist()

