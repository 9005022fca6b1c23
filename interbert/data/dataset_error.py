"""The one error of a corpus that cannot be built from caption manifests and a feature store
(pretraining, retrieval, Flickr30K): the message names the file and line."""
from __future__ import annotations

from interbert.errors import UserError


class DatasetError(UserError, ValueError):
    """A corpus (pretraining, retrieval, Flickr30K) cannot be built; the message names the file and line."""
