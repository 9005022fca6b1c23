"""Loading DeepSpeed checkpoint files without running code from them.

DeepSpeed reads its checkpoint files with ``torch.load(..., weights_only=False)``: a full
unpickler, so a checkpoint from a stranger (or one whose files were swapped) could run any
command on ``--resume``. ``weights_only_load`` replaces that read for the engine's checkpoint
engine: torch's weights-only unpickler (tensors, containers, numbers, strings) plus an explicit
allow-list of the few classes that DeepSpeed and our client state put into checkpoints (listed
in ``ALLOWED_GLOBALS``, found with ``torch.serialization.get_unsafe_globals_in_checkpoint`` on
the checkpoints of every precision this project writes). Anything else is refused with one
line naming the file and the global, in this project's words (torch's own message advises
loading the file unsafely, and is never passed on). Chosen over a manifest of hashes written by
the run: a manifest proves the files are unchanged, not that whoever wrote them is trusted, and
a copied-in checkpoint would need one too.
"""
from __future__ import annotations

import importlib
import pickle

import numpy as np
import torch

from interbert.errors import UserError
from interbert.modeling.checkpoint_files import refused_global

try:  # numpy >= 2 (imported by name: one variable for either module, and no DeprecationWarning from numpy.core)
    _multiarray = importlib.import_module("numpy._core.multiarray")
except ImportError:  # pragma: no cover - numpy 1.x
    _multiarray = importlib.import_module("numpy.core.multiarray")


_torch_load = torch.load  # kept: checkpoint.py points torch.load here while DeepSpeed's converter runs


class UnsafeCheckpointError(UserError, RuntimeError):
    """A checkpoint file holds something other than weights, optimizer state and plain data."""


def allowed_globals() -> list:
    """Classes a DeepSpeed checkpoint of this project may hold besides tensors and containers:
    ZeRO's fragment addresses, stage enum and loss scalers; numpy arrays and dtypes (the RNG
    states of the client state)."""
    from deepspeed.runtime.fp16.loss_scaler import DynamicLossScaler, LossScaler
    from deepspeed.runtime.zero.config import ZeroStageEnum
    from deepspeed.utils.tensor_fragment import fragment_address

    dtypes = [type(np.dtype(name)) for name in ("uint32", "int64", "float64", "uint64", "int32")]
    return [fragment_address, LossScaler, DynamicLossScaler, ZeroStageEnum,
            _multiarray._reconstruct, np.ndarray, np.dtype, *dtypes]


def weights_only_load(path, map_location=None):
    """``torch.load`` with the weights-only unpickler and ``allowed_globals``; refuses anything
    else with an error naming the file and the global."""
    try:
        with torch.serialization.safe_globals(allowed_globals()):
            return _torch_load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as error:  # torch's text advises the unsafe load: never passed on
        name = refused_global(error)
        holds = (f"the Python global {name}, which unpickling would import and could run," if name else
                 "pickled objects that unpickling could run as code,")
        raise UnsafeCheckpointError(
            f"{path}: refused to load: the file holds {holds} where a checkpoint holds only weights and plain "
            "state. Resume only from checkpoints your own runs wrote") from None


def load_checkpoints_safely(engine) -> None:
    """Make ``engine`` (a DeepSpeed engine) read its checkpoint files with ``weights_only_load``."""
    engine.checkpoint_engine.load = weights_only_load
