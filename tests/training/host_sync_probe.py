"""Run `interbert/pretrain.py` in this process and count the device-to-host reads of a training
run: the loop's own count, and every tensor-to-host conversion made from the model, the objectives
or the loop while training (a single-process run; printed as JSON on the last line)."""
import collections
import json
import sys

import torch

WATCHED = ("/interbert/modeling/", "/interbert/training/loop.py", "/interbert/training/pretraining_objective.py",
           "/interbert/finetuning/objective.py", "/interbert/finetuning/model.py")
CONVERSIONS = ("item", "tolist", "cpu", "numpy", "__float__", "__int__", "__bool__")
calls = collections.Counter()
training = {"on": False}


def counting(name, original):
    def wrapper(self, *args, **kwargs):
        caller = sys._getframe(1).f_code.co_filename
        if training["on"] and any(part in caller for part in WATCHED):
            calls[f"{caller.split('/interbert/')[-1]}:{name}"] += 1
        return original(self, *args, **kwargs)
    return wrapper


for method in CONVERSIONS:
    setattr(torch.Tensor, method, counting(method, getattr(torch.Tensor, method)))

from interbert import pretrain  # noqa: E402
from interbert.training import loop as loop_module  # noqa: E402

seen = {}
step_once = loop_module.TrainingLoop._train_step


def counted_step(self, timer):
    seen["loop"] = self
    training["on"] = True
    try:
        return step_once(self, timer)
    finally:
        training["on"] = False


loop_module.TrainingLoop._train_step = counted_step
status = pretrain.main(sys.argv[1:])
loop = seen["loop"]
print(json.dumps({"status": status, "steps": loop.step, "host_reads": loop.host_reads, "calls": dict(calls)}))
