"""save_pretrained / from_pretrained: a model directory is `config.json` + `model.safetensors`.

safetensors holds no code, so a model directory from a stranger cannot run anything on load.
"""
from __future__ import annotations

import logging
from pathlib import Path
from typing import TYPE_CHECKING

import torch
from safetensors.torch import save_file

from interbert.config import InterBertConfig
from interbert.modeling.bert_init import init_from_bert
from interbert.modeling.checkpoint_files import load_safetensors

CONFIG_NAME = "config.json"
WEIGHTS_NAME = "model.safetensors"
log = logging.getLogger(__name__)

# Every class that takes the mixin is also an nn.Module (`class X(PretrainedModelMixin, nn.Module)`):
# type checkers see that base, the running code keeps the plain mixin.
if TYPE_CHECKING:
    _ModuleBase = torch.nn.Module
else:
    _ModuleBase = object


def _list(keys, limit: int = 12) -> str:
    keys = sorted(keys)
    shown = ", ".join(keys[:limit])
    return shown + (f", ... ({len(keys) - limit} more)" if len(keys) > limit else "")


class PretrainedModelMixin(_ModuleBase):
    """Adds the save/load convention to an nn.Module built as `cls(config)`."""

    config: InterBertConfig

    def save_pretrained(self, directory: str | Path) -> Path:
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        self.config.to_json_file(directory / CONFIG_NAME)
        tensors = {name: t.detach().to("cpu").contiguous() for name, t in self.state_dict().items()}
        save_file(tensors, str(directory / WEIGHTS_NAME),
                  metadata={"format": "pt", "class": type(self).__name__})
        return directory

    def init_from_bert(self, directory: str | Path):
        """Fill the matching parts from a Hugging Face BERT directory; returns an InitReport
        (see interbert.modeling.bert_init)."""

        return init_from_bert(self, directory)

    @classmethod
    def adapt_checkpoint_keys(cls, tensors: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Map the keys of a saved model directory onto this class's (identity by default)."""
        return tensors

    @classmethod
    def from_pretrained(cls, directory: str | Path, map_location: str = "cpu", *,
                        dtype: torch.dtype | None = None, device: str | torch.device | None = None):
        """The model saved in ``directory``, in ``eval()`` mode (as Hugging Face models load: call
        ``.train()`` to fine-tune), on ``device`` and in ``dtype`` when given (weights are read
        onto ``map_location`` first)."""
        directory = Path(directory)
        for name in (CONFIG_NAME, WEIGHTS_NAME):
            if not (directory / name).is_file():
                raise FileNotFoundError(
                    f"{directory / name} is missing: a model directory holds {CONFIG_NAME} and "
                    f"{WEIGHTS_NAME} (written by save_pretrained or `interbert convert-release`)"
                )
        config = InterBertConfig.from_json_file(directory / CONFIG_NAME)
        model = cls(config)
        tensors = cls.adapt_checkpoint_keys(load_safetensors(directory / WEIGHTS_NAME, device=map_location))
        expected = model.state_dict()
        missing = set(expected) - set(tensors)
        unexpected = set(tensors) - set(expected)
        wrong_shape = [
            f"{k}: file {tuple(tensors[k].shape)} vs model {tuple(expected[k].shape)}"
            for k in set(expected) & set(tensors) if tensors[k].shape != expected[k].shape
        ]
        if missing or unexpected or wrong_shape:
            problems = []
            if missing:
                problems.append(f"missing from the file: {_list(missing)}")
            if unexpected:
                problems.append(f"not in {cls.__name__}: {_list(unexpected)}")
            if wrong_shape:
                problems.append(f"shape mismatches: {_list(wrong_shape)}")
            raise ValueError(
                f"{directory / WEIGHTS_NAME} does not fit {cls.__name__} built from "
                f"{directory / CONFIG_NAME}:\n  " + "\n  ".join(problems)
            )
        model.load_state_dict(tensors, strict=True)
        model.eval()
        if device is not None or dtype is not None:
            model.to(device=device, dtype=dtype)
        return model
