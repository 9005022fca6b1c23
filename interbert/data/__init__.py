"""The data path, packaged by when each part runs.

- ``ingest``: offline, before any run, from ``interbert data ...``: the conversion pipeline
  (``conversion``), detector output → records (``detections``), each peer format (``formats``),
  caption corpora → manifests (``captions``), ``synth``, and the store tools ``verify``,
  ``migrate`` and ``merge``; ``commands`` wires them to the command line. Nothing on the training
  path imports it.
- ``store``: the feature store that ingest writes and every run reads: ``record_format`` (one
  image's bytes), ``metadata``, ``record_checks``, ``layout`` (single or sharded),
  ``environment_cache`` (LMDB handles), ``reader`` (``FeatureStore``), ``writer``, ``errors``.
- ``text``: the caption side: ``input_streams`` (files, pipes, compressed input), ``utf8``,
  ``manifests`` (caption JSON lines), ``tokenization`` (WordPiece, once per corpus),
  ``caption_batch``.
- ``loading``: samples to batches, in every run: ``sampler`` (per-rank order, resume), ``loader``
  (the one DataLoader), ``batch_ring`` (workers' batches through shared memory), ``padding``,
  ``regions`` (region geometry and packing).
- ``pretraining``: the pretraining samples, built a batch at a time in the loader's workers:
  ``dataset`` (``PretrainingDataset``), ``tasks`` (which tasks, at what rates), ``caption_pairs``,
  ``sample_draws`` (counter-based random draws), and one file per task: ``msm``, ``mrm``, ``itm``.
- ``retrieval``: evaluation input: ``corpus`` (``RetrievalCorpus``).
- ``dataset_error``: ``DatasetError``, manifests and a store that make no corpus.

This package never imports the model or the training engine.
"""
