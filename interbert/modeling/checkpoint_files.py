"""Reading other people's weight files safely: safetensors, or a torch pickle loaded with
`weights_only=True` (tensors and plain containers only, no code)."""
from __future__ import annotations

from pathlib import Path

import torch
from safetensors.torch import load_file

from interbert.errors import UserError


class ModelFileError(UserError, ValueError):
    """A weights file that cannot be read (truncated, damaged, or not plain tensors)."""


def load_safetensors(path: str | Path, device: str = "cpu") -> dict[str, torch.Tensor]:
    """A `.safetensors` file's tensors; a truncated or damaged file is a ModelFileError naming it."""
    try:
        return load_file(str(path), device=device)
    except Exception as error:  # safetensors raises its own error types for damaged files
        raise ModelFileError(f"{path}: not a readable safetensors file ({type(error).__name__}: {error}); it is "
                             "truncated or damaged: copy, save or convert the model again") from None


def load_weights_file(path: Path) -> dict[str, torch.Tensor]:
    """One file: `.safetensors`, or `.bin` / `.pt` / `.pth` written by torch.save."""
    if path.suffix == ".safetensors":
        return load_safetensors(path)
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:
        raise ModelFileError(
            f"{path}: cannot read it as a torch state_dict with weights_only=True "
            f"({error.__class__.__name__}: {error}). Only plain tensors are accepted, so a "
            "file that needs arbitrary code to unpickle is refused"
        ) from None
    if isinstance(state, dict) and "state_dict" in state and isinstance(state["state_dict"], dict):
        state = state["state_dict"]
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise ModelFileError(f"{path}: expected a dict of tensor names to tensors (a state_dict)")
    return state


def read_state_dict(location: str | Path, description: str) -> dict[str, torch.Tensor]:
    """A directory (model.safetensors or pytorch_model.bin inside) or a single file."""
    location = Path(location)
    if location.is_dir():
        for name in ("model.safetensors", "pytorch_model.bin"):
            if (location / name).is_file():
                return load_weights_file(location / name)
        raise FileNotFoundError(
            f"{description} {location} holds neither model.safetensors nor pytorch_model.bin"
        )
    if not location.is_file():
        raise FileNotFoundError(f"{description} {location} does not exist")
    return load_weights_file(location)
