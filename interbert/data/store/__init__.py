"""The region-feature store: LMDB environments (directories), one record per image.

A single store is one LMDB environment: keys are image ids (utf-8), values are records in the
layout of ``record_format``, and one reserved key, ``__interbert_metadata__``, holds a JSON object
(``metadata.StoreMetadata``). A sharded store is a directory with ``store.json`` (the same metadata
plus ``groups``: lists of shard directories, each a single store) for terabyte corpora; an image
lives in shard ``xxh3_64(id) % len(group)`` of its group (``layout``), and stores made on different
machines are merged by listing their groups (``interbert data merge``). Readers treat both alike.

The writer (``writer``) builds under ``<path>.tmp-<pid>`` and renames on success, so an
interrupted run leaves nothing under the final name; every record is checked first
(``record_checks``). Readers (``reader.FeatureStore``) open lazily, read-only, without locks or
readahead, and reopen after a fork (``environment_cache``), so one ``FeatureStore`` object can be
handed to forked data-loader workers. ``errors``: what goes wrong, each naming the store.
"""
