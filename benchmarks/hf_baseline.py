"""The baseline for throughput.py: the same InterBERT layout composed the way the peers'
code does it. transformers' BertLayer with eager attention and an additive -10000 mask, MSM
logits over every text position (as the released code computes them), MRM logits over every
region, losses by ignore_index, and plain torch.optim.AdamW outside any engine."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from transformers import BertConfig
from transformers.models.bert.modeling_bert import (
    BertEmbeddings,
    BertLayer,
    BertLMPredictionHead,
    BertPredictionHeadTransform,
)

from interbert.config import InterBertConfig, StreamConfig


def _bert_config(config: InterBertConfig, stream: StreamConfig) -> BertConfig:
    bert = BertConfig(
        vocab_size=config.vocab_size, hidden_size=config.hidden_size,
        num_attention_heads=stream.num_attention_heads, intermediate_size=stream.intermediate_size,
        hidden_dropout_prob=stream.hidden_dropout_prob,
        attention_probs_dropout_prob=stream.attention_probs_dropout_prob,
        max_position_embeddings=config.max_position_embeddings,
        type_vocab_size=config.type_vocab_size, layer_norm_eps=config.layer_norm_eps,
        hidden_act="gelu",
    )
    bert._attn_implementation = "eager"
    return bert


def _additive(mask: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    return (1.0 - mask[:, None, None, :].to(dtype)) * -10000.0


class HfEagerInterBert(nn.Module):
    """forward(**batch) -> the weighted pretraining loss (a scalar), as InterBertForPretraining."""

    def __init__(self, config: InterBertConfig):
        super().__init__()
        self.config = config
        text = _bert_config(config, config.interaction)
        self.embeddings = BertEmbeddings(text)
        self.image_embeddings = nn.Linear(config.region_feature_size, config.hidden_size)
        self.image_location_embeddings = nn.Linear(config.region_location_size, config.hidden_size)
        self.image_layer_norm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)

        def stack(stream):
            return nn.ModuleList(BertLayer(_bert_config(config, stream)) for _ in range(stream.num_layers))

        self.interaction = stack(config.interaction)
        self.text_extraction = stack(config.text_extraction)
        self.image_extraction = stack(config.image_extraction)
        self.text_pooler = nn.Linear(config.hidden_size, config.pooled_size)
        self.image_pooler = nn.Linear(config.hidden_size, config.pooled_size)
        self.msm = BertLMPredictionHead(text)
        self.msm.decoder.weight = self.embeddings.word_embeddings.weight  # tied, as released
        self.mrm_transform = BertPredictionHeadTransform(text)
        self.mrm_decoder = nn.Linear(config.hidden_size, config.num_region_classes)
        self.itm = nn.Linear(config.pooled_size, 2)

    def forward(self, input_ids, token_type_ids, text_mask, region_features, region_locations,
                region_mask, msm_labels, mrm_labels, itm_labels, mrm_soft_labels=None):
        text = self.embeddings(input_ids=input_ids, token_type_ids=token_type_ids)
        regions = self.image_layer_norm(self.image_embeddings(region_features)
                                        + self.image_location_embeddings(region_locations))
        num_regions = regions.shape[1]
        hidden = torch.cat([regions, text], 1)
        mask = _additive(torch.cat([region_mask, text_mask], 1), hidden.dtype)
        for layer in self.interaction:
            hidden = layer(hidden, mask)
        text, regions = hidden[:, num_regions:], hidden[:, :num_regions]
        for layer in self.text_extraction:
            text = layer(text, _additive(text_mask, text.dtype))
        for layer in self.image_extraction:
            regions = layer(regions, _additive(region_mask, regions.dtype))
        pooled = torch.relu(self.text_pooler(text[:, 0])) * torch.relu(self.image_pooler(regions[:, 0]))
        msm_logits = self.msm(text)  # B×T×V: every position, masked or not
        mrm_logits = self.mrm_decoder(self.mrm_transform(regions))  # B×R×C
        msm = F.cross_entropy(msm_logits.flatten(0, 1).float(), msm_labels.flatten(), ignore_index=-100)
        mrm_targets = mrm_labels.masked_fill((itm_labels != 1)[:, None], -100)
        if mrm_soft_labels is not None and self.config.mrm_loss == "kl":
            selected = mrm_targets != -100
            log_probs = F.log_softmax(mrm_logits.float(), -1)
            kl = F.kl_div(log_probs, mrm_soft_labels.float(), reduction="none").sum(-1)
            mrm = (kl * selected).sum() / selected.sum().clamp(min=1)
        else:
            mrm = F.cross_entropy(mrm_logits.flatten(0, 1).float(), mrm_targets.flatten(), ignore_index=-100)
        itm = F.cross_entropy(self.itm(F.dropout(pooled, 0.1, self.training)).float(), itm_labels)
        return (self.config.msm_weight * torch.nan_to_num(msm) + self.config.mrm_weight * torch.nan_to_num(mrm)
                + self.config.itm_weight * itm)
