"""Flickr30K fine-tuning's hard-negative miner: the hard negative mined for a caption is the model's
top-scoring other image."""
from __future__ import annotations

import numpy as np
import torch


def test_mined_hard_negative_is_the_best_scoring_other_image(ft_corpus, tiny_model):
    from interbert.data.loading.sampler import DistributedShardSampler
    from interbert.finetuning.flickr30k import Flickr30kTrainSet, HardNegativeMiner

    dataset = Flickr30kTrainSet(ft_corpus / "features", ft_corpus / "captions.jsonl", max_regions=12)
    sampler = DistributedShardSampler(len(dataset), seed=0)
    images = len(dataset.image_ids)
    miner = HardNegativeMiner(dataset, sampler, pool_size=images - 1, refresh_every=1, window=4,
                              device=torch.device("cpu"), dtype=torch.float32, chunk=2)
    miner.refresh(tiny_model)
    upcoming = sampler.epoch_indices()[:4]
    assert int((dataset.hard_negatives >= 0).sum()) == 4
    for caption in upcoming:
        own = int(dataset.caption_to_image[caption])
        text = dataset.text(int(caption))
        scores = []
        with torch.no_grad():
            for image in range(images):
                features, locations = dataset.image(image)
                batch = {"input_ids": torch.from_numpy(text[0])[None],
                         "token_type_ids": torch.from_numpy(text[1])[None],
                         "text_mask": torch.ones(1, len(text[0]), dtype=torch.bool),
                         "region_features": torch.from_numpy(features)[None],
                         "region_locations": torch.from_numpy(locations)[None],
                         "region_mask": torch.ones(1, len(features), dtype=torch.bool)}
                scores.append(-1.0 if image == own else float(tiny_model.itm_score(**batch)[0]))
        assert int(dataset.hard_negatives[caption]) == int(np.argmax(scores))
