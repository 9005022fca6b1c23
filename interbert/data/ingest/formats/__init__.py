"""The detector-output formats the converters read, one module each (docs/formats.md): ``tsv``
(bottom-up-attention, LXMERT), ``npz`` (per-image files, MILVLG), ``vilbert_lmdb``,
``uniter_lmdb``, ``tensorpack_lmdb`` (over ``source_lmdb``: other projects' LMDBs as input),
``vinvl`` with ``vinvl_rows`` (VinVL / Oscar+ TSVs), and ``safe_pickle`` / ``safe_msgpack``
(peers' pickles and msgpack read without running their code)."""
