"""The fine-tuning script that DeepSpeed's launcher runs on every rank (the flags, the run and its
parts are `interbert.finetuning`).

    deepspeed --hostfile hostfiles/v100x8 interbert/finetune.py --task flickr30k \\
        --deepspeed_config ds_configs/finetune_flickr30k_v100x8.json --init-model runs/pretrain/model \\
        --features stores/flickr30k --captions f30k.jsonl --output-dir runs/f30k

Run as a path, it imports the installed `interbert` (`./run.sh` installs the checkout, editable);
`deepspeed --module interbert.finetune ...` and `python -m interbert.finetune ...` need no install
from the repository root. See docs/finetuning.md.
"""
import sys

try:
    from interbert.finetuning.command import main
except ModuleNotFoundError as error:
    if error.name != "interbert":
        raise
    print(f"interbert/finetune.py: the interbert package is not installed in this Python ({sys.executable}): "
          "run ./run.sh or `pip install -e .` in the repository, or start the ranks with "
          "`deepspeed --module interbert.finetune` from the repository root", file=sys.stderr)
    sys.exit(2)

if __name__ == "__main__":
    sys.exit(main())
