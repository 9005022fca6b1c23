"""Reading other people's weight files safely: safetensors, or a torch pickle loaded with
`weights_only=True` (tensors and plain containers only, no code). A file that cannot be read is
one line in this project's words: cut short (its size and where it ends), holding code (the
global it names), or not a weights file at all; torch's own advice to load it unsafely is never
passed on."""
from __future__ import annotations

import json
import pickletools
import re
import zipfile
from pathlib import Path

import torch
from safetensors.torch import load_file

from interbert.errors import UserError


class ModelFileError(UserError, ValueError):
    """A weights file that cannot be read (truncated, damaged, or not plain tensors)."""


def _empty(path: Path) -> str:
    return f"{path}: incomplete: the file is empty (0 bytes): it was never written, or its copy was cut off"


def torch_file_cut_short(path: str | Path) -> str | None:
    """Why a torch.save file is incomplete (a copy or download cut short, a full disk), or None.
    torch.save writes a zip archive whose directory is at its very end; a file cut anywhere lacks it.
    Files that do not start as a zip (torch's legacy format) are not judged here."""
    path = Path(path)
    with open(path, "rb") as stream:
        head = stream.read(4)
    size = path.stat().st_size
    if size == 0:
        return _empty(path)
    if head != b"PK\x03\x04":
        return None
    try:
        with zipfile.ZipFile(path) as archive:
            ends = [info.header_offset + len(info.filename) + 30 + info.compress_size for info in archive.infolist()]
    except zipfile.BadZipFile:
        return (f"{path}: incomplete: the file ends at byte {size:,} without the archive directory a complete "
                "torch.save file ends with (a copy or download cut short, or a full disk)")
    if ends and max(ends) > size:
        return f"{path}: incomplete: its members reach byte {max(ends):,} but the file ends at byte {size:,}"
    return None


REFETCH = "download or copy it again, and check that its size matches the source's"
_REFUSED_GLOBAL = re.compile(r"GLOBAL (\S+)")
_SAFETENSORS_HEADER_LIMIT = 100_000_000  # the safetensors format's own limit


def safetensors_file_cut_short(path: str | Path) -> str | None:
    """Why a `.safetensors` file is incomplete, or None: its JSON header says where its last tensor
    ends, and the file ends before that (read as JSON, nothing is unpickled)."""
    path = Path(path)
    size = path.stat().st_size
    if size == 0:
        return _empty(path)
    with open(path, "rb") as stream:
        prefix = stream.read(8)
        if len(prefix) < 8:
            return f"{path}: incomplete: the file ends at byte {size:,}, inside its header"
        length = int.from_bytes(prefix, "little")
        if length > _SAFETENSORS_HEADER_LIMIT:
            return None  # not a safetensors file
        if 8 + length > size:
            return f"{path}: incomplete: its header reaches byte {8 + length:,} but the file ends at byte {size:,}"
        try:
            header = json.loads(stream.read(length))
            end = max((entry["data_offsets"][1] for name, entry in header.items() if name != "__metadata__"),
                      default=0)
        except (ValueError, TypeError, KeyError, IndexError, AttributeError):
            return None  # damaged, not cut short
    if 8 + length + end > size:
        return f"{path}: incomplete: its tensors reach byte {8 + length + end:,} but the file ends at byte {size:,}"
    return None


def refused_global(error: BaseException) -> str | None:
    """The Python global (`module.name`) that torch's weights-only unpickler refused, as its error
    names it; None when the error names none."""
    match = _REFUSED_GLOBAL.search(str(error))
    if not match:
        return None
    name = match.group(1).rstrip(".")
    return name if "." in name else f"builtins.{name}"  # torch writes builtins.eval as `eval`


def _legacy_cut_short(path: Path, error: BaseException) -> bool:
    """Whether a file in torch's legacy (pre-zip) format ends early: inside its five pickles (magic
    number, protocol, system info, the object, the storage keys; parsed, never unpickled) or in
    the tensor data after them (torch's reader then meets the end of the file)."""
    with open(path, "rb") as stream:
        if stream.read(2) != b"\x80\x02":
            return False
        stream.seek(0)
        try:
            for _ in range(5):
                for _ in pickletools.genops(stream):
                    pass
        except ValueError:  # pickletools' word for any malformed or exhausted pickle
            return stream.tell() >= path.stat().st_size
    return isinstance(error, EOFError) or "unexpected EOF" in str(error)


def unreadable_torch_file(path: Path, error: BaseException) -> str:
    """One line on why `torch.load(path, weights_only=True)` failed with `error`: cut short, a
    global that is code, or not a torch.save file of tensors."""
    if isinstance(error, OSError) and error.filename is not None:
        return f"{path}: cannot read it ({error.strerror})"
    cut = torch_file_cut_short(path)
    if cut:
        return f"{cut}; {REFETCH}"
    if _legacy_cut_short(path, error):
        return (f"{path}: incomplete: the file ends at byte {path.stat().st_size:,}, before the end of its pickled "
                f"tensors (a copy or download cut short, or a full disk); {REFETCH}")
    name = refused_global(error)
    if name:
        return (f"{path}: refused to load: the file holds the Python global {name}, which unpickling would import "
                "and could run, where a state_dict holds only tensors; use a plain state_dict or a .safetensors "
                "copy from a source you trust")
    return (f"{path}: not a state_dict written by torch.save (nor a .safetensors file): torch cannot read it as "
            "tensors and plain containers; check that the path names the weights file itself")


def load_safetensors(path: str | Path, device: str = "cpu") -> dict[str, torch.Tensor]:
    """A `.safetensors` file's tensors; a truncated or damaged file is a ModelFileError naming it."""
    try:
        return load_file(str(path), device=device)
    except Exception as error:  # noqa: BLE001 - safetensors raises its own error types for damaged files
        if isinstance(error, OSError):  # missing or unreadable: not a question of its bytes
            raise ModelFileError(f"{path}: cannot read it ({error.strerror or error})") from None
        cut = safetensors_file_cut_short(path)
        if cut:
            raise ModelFileError(f"{cut}; {REFETCH}") from None
        raise ModelFileError(f"{path}: not a readable safetensors file ({type(error).__name__}: {error}); it is "
                             "truncated or damaged: copy, save or convert the model again") from None


def load_weights_file(path: Path) -> dict[str, torch.Tensor]:
    """One file: `.safetensors`, or `.bin` / `.pt` / `.pth` written by torch.save."""
    if path.suffix == ".safetensors":
        return load_safetensors(path)
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # noqa: BLE001 - whatever stops the weights-only reader, the line says why
        raise ModelFileError(unreadable_torch_file(path, error)) from None
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
