"""The InterBERT model: backbone, heads, checkpoint import and export."""
from interbert.config import InterBertConfig, StreamConfig
from interbert.modeling.backbone import InterBertModel, InterBertOutput
from interbert.modeling.pretraining import INPUT_KEYS, InterBertForPretraining, PretrainingOutput

__all__ = [
    "INPUT_KEYS",
    "InterBertConfig",
    "InterBertForPretraining",
    "InterBertModel",
    "InterBertOutput",
    "PretrainingOutput",
    "StreamConfig",
]
