"""The pretraining corpus's text side: every usable caption line of the manifests, with its image
and its place (``file:line``)."""
from __future__ import annotations

from collections import Counter
from collections.abc import Iterable

from interbert.data.dataset_error import DatasetError
from interbert.data.text.manifests import read_manifest


def read_caption_pairs(manifests: Iterable, split: str | None, strict: bool, skipped: Counter,
                       other_splits: Counter | None = None) -> list:
    """``(image_id, caption, "file:line")`` for every usable manifest line of ``split`` (None = all).

    Empty captions are counted in ``skipped`` (an error when ``strict``); lines of other splits in
    ``other_splits`` (split name → lines).
    """
    pairs = []
    for path in manifests:
        for line_number, entry in read_manifest(path):
            if split is not None and entry.get("split") != split:
                if other_splits is not None:
                    other_splits[str(entry.get("split"))] += 1
                continue
            caption = str(entry["caption"]).strip()
            if not caption:
                if strict:
                    raise DatasetError(f"{path}:{line_number}: empty caption for image {entry['image_id']!r}; "
                                       "fix or remove the line (without strict it is skipped and counted)")
                skipped["empty caption"] += 1
                continue
            pairs.append((entry["image_id"], caption, f"{path}:{line_number}"))
    return pairs
