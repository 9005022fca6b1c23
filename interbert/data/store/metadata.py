"""A feature store's metadata: the store-wide facts every record must agree with, the reserved
key and file that hold them, and the label convention (``StoreMetadata``)."""
from __future__ import annotations

import json
from dataclasses import asdict, dataclass

from interbert.data.store.errors import FeatureStoreError, LegacyStoreError
from interbert.data.store.record_format import CHECKSUM, FORMAT_VERSION, LEGACY_VERSION

METADATA_KEY = b"__interbert_metadata__"
SHARDED_METADATA_FILE = "store.json"
DEFAULT_FEATURE_SIZE = 2048
DEFAULT_NUM_CLASSES = 1601
STORE_FORMAT = "interbert-feature-store"
# Labels index the detector's class space with the background at 0 (1601 classes for the Visual
# Genome detector); -1 means the detector gave no class. Extractors' 0-based ``objects_id``
# (argmax over the classes without the background) is stored as ``objects_id + 1``.
LABEL_CONVENTION = "detector-classes-background-0"


@dataclass
class StoreMetadata:
    """The store-wide facts every record must agree with."""

    feature_size: int = DEFAULT_FEATURE_SIZE
    num_classes: int = DEFAULT_NUM_CLASSES
    record_count: int = 0
    region_count: int = 0
    has_class_probs: bool = False
    created_by: str = ""
    created_at: str = ""
    schema_version: int = FORMAT_VERSION
    format: str = STORE_FORMAT
    label_convention: str = LABEL_CONVENTION
    checksum: str = CHECKSUM

    def to_bytes(self) -> bytes:
        return json.dumps(asdict(self), sort_keys=True).encode("utf-8")

    def consistency_key(self) -> tuple:
        """What every shard of one store must share."""
        return (self.feature_size, self.num_classes, self.schema_version, self.label_convention)

    @classmethod
    def from_bytes(cls, data: bytes, path: str, legacy: bool = False) -> StoreMetadata:
        """Parse and check a metadata record; ``legacy=True`` accepts schema version 1 (migration)."""
        try:
            fields = json.loads(data)
            known = {k: v for k, v in fields.items() if k in cls.__dataclass_fields__}
            if fields.get("schema_version", LEGACY_VERSION) < FORMAT_VERSION:
                known.setdefault("label_convention", "unknown")
                known.setdefault("checksum", "none")
            metadata = cls(**known)
        except (ValueError, TypeError) as error:
            raise FeatureStoreError(f"feature store {path}: the metadata record is unreadable ({error}); "
                                    "rebuild the store") from None
        if metadata.format != STORE_FORMAT:
            raise FeatureStoreError(f"feature store {path}: metadata format is {metadata.format!r}, "
                                    f"not {STORE_FORMAT!r}")
        if metadata.schema_version > FORMAT_VERSION:
            raise FeatureStoreError(f"feature store {path}: schema version {metadata.schema_version} is "
                                    f"newer than this interbert ({FORMAT_VERSION}); upgrade interbert")
        if metadata.schema_version < FORMAT_VERSION and not legacy:
            raise LegacyStoreError(
                f"feature store {path}: schema version {metadata.schema_version} was written before records "
                "carried checksums and before labels followed one convention (extractors' 0-based objects_id "
                "may be stored unshifted); migrate it with `interbert data migrate --out NEW_STORE "
                f"{path}` or rebuild it with the command that wrote it ({metadata.created_by or 'unknown'})")
        return metadata
