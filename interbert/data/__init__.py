"""The data path: feature store, caption manifests, pretraining tasks, batching, corpora.

Storage: ``record_format`` (one image's bytes), ``feature_store`` (the LMDB store).
Text: ``manifests`` (caption JSON lines), ``tokenization`` (WordPiece, once per corpus).
Tasks: ``msm``, ``mrm``, ``itm`` (one file per pretraining task), ``regions`` (geometry).
Samples and batches: ``pretraining_dataset`` (samples, ``collate``), ``sampling`` (per-rank
order, resume), ``loader`` (the DataLoader). Evaluation input: ``retrieval``.
Producers: ``converters`` (TSV / npz → store), ``captions`` (corpora → manifests), ``synth``,
``verify``; ``commands`` wires them to ``interbert data ...``.
This package never imports the model or the training engine.
"""
