"""Where torch JIT-builds DeepSpeed's ops, and the library of an earlier build of one: what the
set-up (`extensions`) and the optimizer's choice (`optimizer`) both ask."""
from __future__ import annotations

import os
import sys
from pathlib import Path


def op_build_directory(name: str) -> Path:
    """Where torch JIT-builds the op `name` (TORCH_EXTENSIONS_DIR/name, else its per-Python/CUDA folder)."""
    configured = os.environ.get("TORCH_EXTENSIONS_DIR")
    if configured:
        return Path(configured) / name
    import torch
    from torch.utils.cpp_extension import get_default_build_root

    accelerator = (f"rocm{torch.version.hip.replace('.', '')}" if torch.version.hip else
                   f"cu{torch.version.cuda.replace('.', '')}" if torch.version.cuda else "cpu")
    python = f"py{sys.version_info.major}{sys.version_info.minor}{getattr(sys, 'abiflags', '')}"
    return Path(get_default_build_root()) / f"{python}_{accelerator}" / name


def cached_op(name: str) -> str | None:
    """The library of an earlier JIT build of `name` in torch's extensions cache, if there is one."""
    library = op_build_directory(name) / f"{name}.so"
    return str(library) if library.is_file() else None
