"""InterBertModel: embeddings, the single-stream interaction module over [regions ; text],
and the two-stream extraction module (paper §2.2, Figure 1)."""
from __future__ import annotations

import logging
from dataclasses import dataclass

import torch
from torch import nn

from interbert.config import InterBertConfig
from interbert.modeling.attention import SelfAttentionScores
from interbert.modeling.embeddings import RegionEmbeddings, TextEmbeddings
from interbert.modeling.layers import TransformerStack
from interbert.modeling.pretrained_io import PretrainedModelMixin

log = logging.getLogger(__name__)


@dataclass
class InterBertOutput:
    text_hidden: torch.Tensor  # B×T×H, after the text extractor
    image_hidden: torch.Tensor  # B×R×H, after the image extractor (region 0: global token)
    pooled_text: torch.Tensor  # B×P
    pooled_image: torch.Tensor  # B×P


class Pooler(nn.Module):
    """First token -> Linear -> ReLU (as released; BERT's pooler uses tanh)."""

    def __init__(self, hidden_size: int, pooled_size: int):
        super().__init__()
        self.dense = nn.Linear(hidden_size, pooled_size)

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        return torch.relu(self.dense(hidden[:, 0]))


def init_weights(module: nn.Module, std: float) -> None:
    """BERT's initialisation: normal(0, std) weights, zero biases, unit LayerNorms."""
    if isinstance(module, (nn.Linear, nn.Embedding)):
        nn.init.normal_(module.weight, mean=0.0, std=std)
        if isinstance(module, nn.Linear) and module.bias is not None:
            nn.init.zeros_(module.bias)
    elif isinstance(module, nn.LayerNorm):
        nn.init.ones_(module.weight)
        nn.init.zeros_(module.bias)


class InterBertModel(PretrainedModelMixin, nn.Module):
    """The backbone. forward(input_ids, token_type_ids, text_mask, region_features,
    region_locations, region_mask) -> InterBertOutput (shapes in docs/design.md)."""

    def __init__(self, config: InterBertConfig):
        super().__init__()
        self.config = config
        attention = config.attention_implementation
        hidden, eps = config.hidden_size, config.layer_norm_eps
        self.embeddings = TextEmbeddings(config)
        self.region_embeddings = RegionEmbeddings(config)
        self.interaction = TransformerStack(hidden, config.interaction, eps, attention)
        self.text_extraction = TransformerStack(hidden, config.text_extraction, eps, attention)
        self.image_extraction = TransformerStack(hidden, config.image_extraction, eps, attention)
        self.text_pooler = Pooler(hidden, config.pooled_size)
        self.image_pooler = Pooler(hidden, config.pooled_size)
        self.apply(lambda module: init_weights(module, config.initializer_range))

    @classmethod
    def adapt_checkpoint_keys(cls, tensors):
        """A pretraining directory holds `interbert.*` plus the heads: keep the backbone."""
        prefix = "interbert."
        if not any(key.startswith(prefix) for key in tensors):
            return tensors
        dropped = sorted(key for key in tensors if not key.startswith(prefix))
        if dropped:
            log.info("loading the backbone only; %d head tensors left out (%s, ...)",
                     len(dropped), dropped[0])
        return {key[len(prefix):]: t for key, t in tensors.items() if key.startswith(prefix)}

    def set_attention_implementation(self, implementation: str) -> None:
        """Switch every layer between "sdpa" and "eager" (same weights, same function)."""
        self.config.attention_implementation = implementation
        self.config.validate()
        for module in self.modules():
            if isinstance(module, SelfAttentionScores):  # the one module with an `implementation`
                module.implementation = implementation

    def forward(
        self,
        input_ids: torch.Tensor,
        token_type_ids: torch.Tensor,
        text_mask: torch.Tensor,
        region_features: torch.Tensor,
        region_locations: torch.Tensor,
        region_mask: torch.Tensor,
    ) -> InterBertOutput:
        text_mask, region_mask = text_mask.bool(), region_mask.bool()
        text = self.embeddings(input_ids, token_type_ids)
        regions = self.region_embeddings(region_features, region_locations)
        num_regions = regions.shape[1]
        # Single stream: regions first, then text, under one joint padding mask.
        joint = self.interaction(torch.cat([regions, text], dim=1),
                                 torch.cat([region_mask, text_mask], dim=1))
        image_hidden = self.image_extraction(joint[:, :num_regions], region_mask)
        text_hidden = self.text_extraction(joint[:, num_regions:], text_mask)
        return InterBertOutput(
            text_hidden=text_hidden,
            image_hidden=image_hidden,
            pooled_text=self.text_pooler(text_hidden),
            pooled_image=self.image_pooler(image_hidden),
        )

    def text_interaction(self, input_ids, token_type_ids, text_mask) -> torch.Tensor:
        """Text alone through the embeddings and the interaction stack (B×T×H): with
        BERT-initialised weights this is exactly BERT's encoder."""
        return self.interaction(self.embeddings(input_ids, token_type_ids), text_mask.bool())

    def encode_text(self, input_ids, token_type_ids, text_mask) -> torch.Tensor:
        """The single-modal text path (GLUE): interaction stack then text extractor, B×T×H."""
        hidden = self.text_interaction(input_ids, token_type_ids, text_mask)
        return self.text_extraction(hidden, text_mask.bool())
