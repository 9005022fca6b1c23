"""Fine-tuning and evaluation on the paper's downstream tasks (§3, Appendix 6.2).

Tasks: ``flickr30k`` (4-way training set, hard-negative miner), ``vcr`` (official JSON lines),
``glue`` (standard TSVs). Model: ``model`` (task heads and losses on top of the pretrained
model). Evaluation: ``scoring`` (pair scoring that computes each part once), ``retrieval`` (the
full and the two-stage retrieval evaluation), ``metrics``. Training: ``settings`` (the config's
``finetune`` section), ``batching`` (collate, resumable loader), ``tasks`` (what ``--task``
builds), ``ema``, ``trainer`` (the loop); the entry point is ``interbert/finetune.py``.
"""
