"""The batch contract every part relies on (docs/design.md): the keys of a batch, the label
value that means "no target here", and the padding id of text. Data code builds batches with
these keys, the model reads them, and the trainers and FLOP counter pass them along."""
from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import torch

# The six model inputs, in the order of InterBertModel.forward.
INPUT_KEYS = ("input_ids", "token_type_ids", "text_mask", "region_features", "region_locations", "region_mask")
# The pretraining targets; mrm_soft_labels only where the store has class distributions.
LABEL_KEYS = ("msm_labels", "mrm_labels", "mrm_soft_labels", "itm_labels")
# Where the MSM and MRM losses count, as flat indices into B×T and B×R (`loss_positions`): the data
# path knows them, so the heads gather those rows on the device without asking the device which
# labels are set (a boolean-mask selection would be a device-to-host sync in every micro-batch).
POSITION_KEYS = ("msm_positions", "mrm_positions")
BATCH_KEYS = INPUT_KEYS + LABEL_KEYS + POSITION_KEYS
IGNORE_INDEX = -100  # a label with no target (torch's cross-entropy default)
PAD_ID = 0  # [PAD] in the BERT vocabularies
ITM_MATCHED = 1  # the ITM class of a caption that belongs to its image (the release used 0)


def loss_positions(labels, rows=None):
    """Flat indices (into ``labels.flatten()``, int64, ascending) of the entries that carry a target;
    with ``rows`` (B bool) only those rows count. ``labels``: B×L long tensor. The data path calls it
    on the host; the model only when a batch comes without positions (then it syncs)."""
    keep = labels != IGNORE_INDEX
    if rows is not None:
        keep = keep & rows[:, None]
    return keep.flatten().nonzero().squeeze(1)


def to_device(batch: dict, device: torch.device, dtype: torch.dtype) -> dict:
    """Move a batch to `device`; floating tensors take the model's `dtype`."""
    moved = {}
    for key, value in batch.items():
        value = value.to(device, non_blocking=True)
        moved[key] = value.to(dtype) if value.is_floating_point() else value
    return moved
