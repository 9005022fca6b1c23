"""Checks of a run's inputs that every kind of training makes before anything is built."""
from __future__ import annotations

from interbert.config import InterBertConfig
from interbert.data.store.reader import FeatureStore
from interbert.errors import UserError


class FeatureSizeError(UserError, ValueError):
    pass


def check_feature_size(features: str, model_config: InterBertConfig, flag: str = "--features") -> None:
    """The store's region features have the width the model takes; otherwise one line naming both,
    before anything is built (the mismatch would otherwise surface as a shape error mid-forward)."""
    size = FeatureStore(features).metadata.feature_size
    if size != model_config.region_feature_size:
        raise FeatureSizeError(f"{flag} {features}: its region features have {size} values, the model takes "
                               f"{model_config.region_feature_size} (region_feature_size): use a store of the "
                               f"model's detector, or a model config with region_feature_size {size} "
                               "(--model-config)")
