"""Run `interbert/pretrain.py` in this process and count the device-to-host reads of a training
run, two ways (a single-process run; printed as JSON on the last line):
- `calls`: tensor-to-host conversions (item, tolist, cpu, ...) made from the model, the objectives or
  the loop while training, by the file that made them;
- `syncs`: every aten op that makes a CUDA device wait for the host, counted at the dispatcher (a
  TorchDispatchMode, so a boolean-mask index or a `nonzero` inside any library counts too), by the
  phase of the step it ran in: forward (the objective's forward and losses on the device batch),
  backward, agree (the loop's per-step flags) and step (DeepSpeed's optimizer step). The host-side
  sums the objective takes from the batch before it moves to the device are not counted: on a GPU
  they read host memory."""
import collections
import json
import sys

import torch
from torch.utils._python_dispatch import TorchDispatchMode

WATCHED = ("/interbert/modeling/", "/interbert/training/loop.py", "/interbert/training/pending_sums.py",
           "/interbert/pretraining/objective.py",
           "/interbert/finetuning/objective.py", "/interbert/finetuning/model.py")
# the FLOP count reads the batch's shapes and labels while the batch is still on the host (host_sums)
UNWATCHED = ("/interbert/modeling/flops.py",)
CONVERSIONS = ("item", "tolist", "cpu", "numpy", "__float__", "__int__", "__bool__")
aten = torch.ops.aten
# ops whose CUDA kernels read a result on the host before they return (or whose output size depends on values)
ALWAYS_SYNC = {aten.nonzero.default, aten._local_scalar_dense.default, aten.masked_select.default, aten.equal.default,
               aten.is_nonzero.default, aten._unique2.default, aten.unique_consecutive.default,
               aten.repeat_interleave.Tensor}
BOOL_INDEXED = {aten.index.Tensor, aten.index_put.default, aten.index_put_.default}
calls = collections.Counter()
syncs = collections.Counter()
training = {"on": False, "phase": None}


def counting(name, original):
    def wrapper(self, *args, **kwargs):
        caller = sys._getframe(1).f_code.co_filename
        if training["on"] and any(part in caller for part in WATCHED) and not any(p in caller for p in UNWATCHED):
            calls[f"{caller.split('/interbert/')[-1]}:{name}"] += 1
        return original(self, *args, **kwargs)
    return wrapper


for method in CONVERSIONS:
    setattr(torch.Tensor, method, counting(method, getattr(torch.Tensor, method)))


def _bool_index(args) -> bool:
    indices = args[1] if len(args) > 1 else ()
    return any(isinstance(i, torch.Tensor) and i.dtype in (torch.bool, torch.uint8) for i in indices or ())


class SyncCounter(TorchDispatchMode):
    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if training["phase"] and (func in ALWAYS_SYNC or (func in BOOL_INDEXED and _bool_index(args))):
            syncs[f"{training['phase']}:{func}"] += 1
        return func(*args, **(kwargs or {}))


from interbert.pretraining import command as pretrain  # noqa: E402
from interbert.pretraining.objective import PretrainingObjective  # noqa: E402
from interbert.training import loop as loop_module  # noqa: E402

seen = {}
Loop = loop_module.TrainingLoop
originals = {name: getattr(Loop, name) for name in ("_train_step", "_agree")}


def in_phase(phase, original):
    def wrapper(self, *args, **kwargs):
        previous, training["phase"] = training["phase"], phase
        try:
            return original(self, *args, **kwargs)
        finally:
            training["phase"] = previous
    return wrapper


def counted_step(self):
    seen["loop"] = self
    if not getattr(self.engine, "_probed", False):
        self.engine.backward = in_phase("backward", type(self.engine).backward).__get__(self.engine)
        self.engine.step = in_phase("step", type(self.engine).step).__get__(self.engine)
        self.engine._probed = True
    training["on"] = True
    try:
        with SyncCounter():
            return originals["_train_step"](self)
    finally:
        training["on"] = False


Loop._train_step = counted_step
PretrainingObjective.measure = in_phase("forward", PretrainingObjective.measure)
Loop._agree = in_phase("agree", originals["_agree"])
status = pretrain.main(sys.argv[1:])
loop = seen["loop"]
print(json.dumps({"status": status, "steps": loop.step, "host_reads": loop.host_reads, "calls": dict(calls),
                  "syncs": dict(syncs)}))
