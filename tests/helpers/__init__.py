"""Helpers shared by the test folders, imported as `from tests.helpers.<module> import ...` (the
repository root is on sys.path through pytest's `pythonpath` setting in pyproject.toml).

- corpus: the synthetic corpora of the suite, one builder for every shape (tests/conftest.py's fixtures)
- ds_config: write_ds_config, the DeepSpeed config of a test run (pretraining and fine-tuning)
- train_log: read_train_log and logged_lines, what a run wrote to train_log.jsonl
- training_runs: the entry points in subprocesses: environment, pretrain arguments, the deepspeed
  launcher, waiting for and ending a job
- data: feature-store records, small stores, planted bad records, manifests, detector TSV rows
- peer_writers: source stores laid out as other projects' writers lay them out (the converter tests)
- loopback_hosts: two sshd hosts on 127.0.0.1 and 127.0.0.2 (tests/hosts)
- two_host_jobs: DeepSpeed's runner over the two loopback hosts (tests/hosts)
- private_slurm: a one-node SLURM cluster of this machine (tests/slurm)
"""
