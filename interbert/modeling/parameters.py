"""Parameter counts per part of the model, tied weights counted once."""
from __future__ import annotations

from torch import nn

from interbert.modeling.pretraining import InterBertForPretraining

# part name -> module path prefixes inside InterBertForPretraining
PARTS = {
    "text_embeddings": ("interbert.embeddings.",),
    "region_embeddings": ("interbert.region_embeddings.",),
    "interaction": ("interbert.interaction.",),
    "text_extraction": ("interbert.text_extraction.",),
    "image_extraction": ("interbert.image_extraction.",),
    "poolers": ("interbert.text_pooler.", "interbert.image_pooler."),
    "msm_head": ("msm_head.",),
    "mrm_head": ("mrm_head.",),
    "itm_head": ("itm_head.",),
}


def count_parameters(model: InterBertForPretraining) -> dict[str, int]:
    """{part: parameters} plus `backbone`, `heads` and `total`. The MSM decoder is the
    word-embedding matrix, so it is counted once, under text_embeddings; the count as if
    it were a separate matrix is `total_decoder_counted_twice`."""
    counts = dict.fromkeys(PARTS, 0)
    seen: set[int] = set()
    for name, parameter in model.named_parameters(remove_duplicate=False):
        if id(parameter) in seen:
            continue
        seen.add(id(parameter))
        part = next((p for p, prefixes in PARTS.items() if name.startswith(prefixes)), None)
        if part is None:
            raise AssertionError(f"parameter {name} belongs to no part in PARTS")
        counts[part] += parameter.numel()
    backbone = sum(counts[p] for p in PARTS if p not in ("msm_head", "mrm_head", "itm_head"))
    total = sum(counts.values())
    word_embeddings: nn.Embedding = model.interbert.embeddings.word_embeddings
    return {
        **counts,
        "backbone": backbone,
        "heads": total - backbone,
        "total": total,
        "total_decoder_counted_twice": total + word_embeddings.weight.numel(),
    }
