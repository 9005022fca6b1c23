"""What goes wrong with a feature store: each error names the store, the record where there is
one, and what to do."""
from __future__ import annotations

from interbert.errors import UserError


class FeatureStoreError(UserError):
    """A feature store is missing, unreadable or holds a bad record; the message says where."""


class MissingImageError(FeatureStoreError, KeyError):
    """An image id has no record in the store."""

    def __str__(self) -> str:  # KeyError would quote the whole message
        return str(self.args[0])


class CorruptRecordError(FeatureStoreError):
    """A record's bytes cannot be decoded, fail their checksum, or disagree with the metadata."""


class LegacyStoreError(FeatureStoreError):
    """The store predates the current schema; the message says how to migrate or rebuild it."""


def damaged_store_error(path: str, error: Exception) -> FeatureStoreError:
    """The error for an LMDB environment whose pages are damaged (lmdb.CorruptedError and kin)."""
    return FeatureStoreError(f"feature store {path}: damaged LMDB file ({type(error).__name__}: {error}); "
                             "rebuild the store (or this shard) from its source; `interbert data verify` "
                             "lists what is still readable")
