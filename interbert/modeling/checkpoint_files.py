"""Reading other people's weight files safely: safetensors, or a torch pickle loaded with
`weights_only=True` (tensors and plain containers only, no code)."""
from __future__ import annotations

from pathlib import Path

import torch
from safetensors.torch import load_file


def load_weights_file(path: Path) -> dict[str, torch.Tensor]:
    """One file: `.safetensors`, or `.bin` / `.pt` / `.pth` written by torch.save."""
    if path.suffix == ".safetensors":
        return load_file(str(path))
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:
        raise ValueError(
            f"{path}: cannot read it as a torch state_dict with weights_only=True "
            f"({error.__class__.__name__}: {error}). Only plain tensors are accepted, so a "
            "file that needs arbitrary code to unpickle is refused"
        ) from None
    if isinstance(state, dict) and "state_dict" in state and isinstance(state["state_dict"], dict):
        state = state["state_dict"]
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise ValueError(f"{path}: expected a dict of tensor names to tensors (a state_dict)")
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
