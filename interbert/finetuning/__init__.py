"""Fine-tuning and evaluation on the paper's downstream tasks (§3, Appendix 6.2).

Tasks: ``flickr30k`` (4-way training set, hard-negative miner), ``vcr`` (official JSON lines),
``glue`` (standard TSVs); ``hard_captions`` precomputes the release's hard-caption pool. Model:
``model`` (task heads and losses on top of the pretrained model). Evaluation: ``metrics`` (the
retrieval scoring itself is ``interbert.evaluation``). Training: ``settings`` (the config's
``finetune`` section), ``batching`` (collate functions), ``tasks`` (what ``--task`` builds),
``ema``, ``objective`` (the task as an objective of ``training/loop.py``), ``command`` (the
flags and the run; ``interbert/finetune.py`` is the script the launcher runs).
"""
