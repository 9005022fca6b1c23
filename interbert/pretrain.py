"""The pretraining script that DeepSpeed's launcher runs on every rank (the flags, the run and its
parts are `interbert.pretraining`).

    deepspeed --hostfile hostfiles/v100x8 interbert/pretrain.py \\
        --deepspeed_config ds_configs/pretrain_v100x8.json --preset paper-base \\
        --init-bert BERT_DIR --features STORE --captions cc.jsonl sbu.jsonl coco.jsonl \\
        --output-dir runs/paper-base

Run as a path, it imports the installed `interbert` (`./run.sh` installs the checkout, editable);
`deepspeed --module interbert.pretrain ...` and `python -m interbert.pretrain ...` need no install
from the repository root. See docs/training.md.
"""
import sys

try:
    from interbert.pretraining.command import main
except ModuleNotFoundError as error:
    if error.name != "interbert":
        raise
    print(f"interbert/pretrain.py: the interbert package is not installed in this Python ({sys.executable}): "
          "run ./run.sh or `pip install -e .` in the repository, or start the ranks with "
          "`deepspeed --module interbert.pretrain` from the repository root", file=sys.stderr)
    sys.exit(2)

if __name__ == "__main__":
    sys.exit(main())
