"""InterBertForFinetuning: the pretrained model (backbone and ITM head) plus one task head.

| task | scored by | loss |
| --- | --- | --- |
| Flickr30K retrieval, 4-way | the pretraining ITM head (paper §3.4: "reuses the output layer of the pretraining ITM task") | per-pair binary cross-entropy (as released) or a softmax over the 4 choices (ViLBERT), `retrieval_loss` |
| VCR Q→A / QA→R, 4-way | `vil_logit`: Linear(pooled_text ⊙ pooled_image) → 1, as in the fine-tuned release | softmax over the 4 choices |
| GLUE classification | `classifier`: Linear(pooled_text) → labels over the text-only path (`encode_text`) | cross-entropy |
| GLUE regression (STS-B) | the same head with one output | mean squared error |

Multiple-choice batches hold B×K×... tensors (K choices); they are flattened to (B·K)×... for
the backbone. Parameters a task never uses (the MSM and MRM heads; the image side for GLUE)
are frozen, so the optimizer holds no state for them.

A directory made by `interbert convert-release` from the fine-tuned release keeps the
release's task heads in `release_task_heads.safetensors`; a multiple-choice (VCR) head starts
from its `vil_logit` there, which is the same Linear(pooled_text ⊙ pooled_image) → 1.

A fine-tuned model directory is the pretraining directory (`config.json`, `model.safetensors`,
loadable by `InterBertForPretraining.from_pretrained`, so retrieval tools take it as it is) plus
`task.json` and `task_head.safetensors`.
"""  # noqa: E501 (the table's rows)
from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from safetensors.torch import save_file
from torch import nn

from interbert.modeling import INPUT_KEYS, InterBertForPretraining
from interbert.modeling.backbone import init_weights
from interbert.modeling.checkpoint_files import load_safetensors
from interbert.modeling.heads import ITM_MATCHED
from interbert.modeling.release import TASK_HEADS_NAME

KINDS = ("retrieval", "multiple_choice", "classification", "regression")
RETRIEVAL_LOSSES = ("binary", "softmax")
TASK_FILE = "task.json"
HEAD_FILE = "task_head.safetensors"


@dataclass
class TaskSpec:
    name: str  # "flickr30k", "vcr", "glue-sst2", ...
    kind: str  # one of KINDS
    num_labels: int = 1
    retrieval_loss: str = "binary"

    def __post_init__(self):
        if self.kind not in KINDS:
            raise ValueError(f"task kind {self.kind!r}: choose one of {KINDS}")
        if self.retrieval_loss not in RETRIEVAL_LOSSES:
            raise ValueError(f"retrieval_loss {self.retrieval_loss!r}: choose one of {RETRIEVAL_LOSSES}")


@dataclass
class FinetuneOutput:
    loss: torch.Tensor
    logits: torch.Tensor  # B×K choice scores, B×labels class logits, or B regression values
    correct: torch.Tensor  # detached, for accuracy during training (0 for regression)
    count: int


class ChoiceHead(nn.Module):
    """dropout(pooled_text ⊙ pooled_image) → Linear → 1 (the release's `vil_logit`)."""

    def __init__(self, pooled_size: int, dropout: float):
        super().__init__()
        self.dropout = nn.Dropout(dropout)
        self.vil_logit = nn.Linear(pooled_size, 1)

    def forward(self, pooled_text: torch.Tensor, pooled_image: torch.Tensor) -> torch.Tensor:
        return self.vil_logit(self.dropout(pooled_text * pooled_image)).squeeze(-1)


class TextHead(nn.Module):
    """dropout(pooled_text) → Linear → num_labels (GLUE)."""

    def __init__(self, pooled_size: int, num_labels: int, dropout: float):
        super().__init__()
        self.dropout = nn.Dropout(dropout)
        self.classifier = nn.Linear(pooled_size, num_labels)

    def forward(self, pooled_text: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.dropout(pooled_text))


def _flatten_choices(inputs: dict) -> tuple[dict, int | None]:
    """B×K×... → (B·K)×... when the batch is multiple choice; returns K (None otherwise)."""
    if inputs["input_ids"].dim() != 3:
        return inputs, None
    choices = inputs["input_ids"].shape[1]
    return {key: value.flatten(0, 1) for key, value in inputs.items()}, choices


def match_logit(itm_logits: torch.Tensor) -> torch.Tensor:
    """The log-odds of "matched" from 2-way ITM logits (its softmax over choices is ViLBERT's loss)."""
    return itm_logits[:, ITM_MATCHED] - itm_logits[:, 1 - ITM_MATCHED]


def retrieval_loss(itm_logits: torch.Tensor, choices: int, labels: torch.Tensor, kind: str):
    """itm_logits: (B·K)×2; labels: B, the index of the matched choice. Returns (loss, B×K scores)."""
    scores = match_logit(itm_logits).view(-1, choices)
    if kind == "softmax":
        return F.cross_entropy(scores.float(), labels), scores
    targets = torch.full_like(scores, 1 - ITM_MATCHED, dtype=torch.long)
    targets[torch.arange(scores.shape[0], device=scores.device), labels] = ITM_MATCHED
    return F.cross_entropy(itm_logits.float(), targets.view(-1)), scores


class InterBertForFinetuning(nn.Module):
    """forward(labels, **inputs) → FinetuneOutput. `pretraining` is an InterBertForPretraining
    (its `itm_score` stays available for retrieval evaluation)."""

    def __init__(self, pretraining: InterBertForPretraining, task: TaskSpec):
        super().__init__()
        self.pretraining = pretraining
        self.config = pretraining.config
        self.task = task
        pooled, dropout = self.config.pooled_size, self.config.itm_dropout_prob
        self.head: ChoiceHead | TextHead | None = None  # None: retrieval, scored by the ITM head
        self.head_source = "a new head" if task.kind != "retrieval" else "the pretraining ITM head"
        if task.kind == "multiple_choice":
            self.head = ChoiceHead(pooled, dropout)
        elif task.kind in ("classification", "regression"):
            self.head = TextHead(pooled, task.num_labels if task.kind == "classification" else 1, dropout)
        if self.head is not None:
            self.head.apply(lambda module: init_weights(module, self.config.initializer_range))
        self._freeze_unused()

    def _freeze_unused(self) -> None:
        model = self.pretraining
        unused = [model.msm_head, model.mrm_head]
        if self.task.kind != "retrieval":
            unused.append(model.itm_head)
        if self.task.kind in ("classification", "regression"):
            backbone = model.interbert
            unused += [backbone.region_embeddings, backbone.image_extraction, backbone.image_pooler]
        for module in unused:
            for parameter in module.parameters():
                parameter.requires_grad_(False)

    def forward(self, labels: torch.Tensor, **inputs: torch.Tensor) -> FinetuneOutput:
        kind = self.task.kind
        backbone = self.pretraining.interbert
        if kind in ("classification", "regression"):
            hidden = backbone.encode_text(inputs["input_ids"], inputs["token_type_ids"], inputs["text_mask"])
            assert self.head is not None  # these kinds always have a TextHead (__init__)
            logits = self.head(backbone.text_pooler(hidden))
            if kind == "regression":
                values = logits.squeeze(-1)
                return FinetuneOutput(F.mse_loss(values.float(), labels.float()), values,
                                      torch.zeros((), device=values.device), labels.shape[0])
            correct = (logits.detach().argmax(-1) == labels).sum()
            return FinetuneOutput(F.cross_entropy(logits.float(), labels), logits, correct, labels.shape[0])
        flat, choices = _flatten_choices({key: inputs[key] for key in INPUT_KEYS})
        if choices is None:
            raise ValueError(f"task {self.task.name}: expected B×K×... multiple-choice inputs")
        output = backbone(**flat)
        if kind == "retrieval":
            itm_logits = self.pretraining.itm_head(output.pooled_text, output.pooled_image)
            loss, scores = retrieval_loss(itm_logits, choices, labels, self.task.retrieval_loss)
        else:
            assert self.head is not None  # multiple choice always has a ChoiceHead (__init__)
            scores = self.head(output.pooled_text, output.pooled_image).view(-1, choices)
            loss = F.cross_entropy(scores.float(), labels)
        correct = (scores.detach().argmax(-1) == labels).sum()
        return FinetuneOutput(loss, scores, correct, labels.shape[0])

    @torch.no_grad()
    def predict(self, **inputs: torch.Tensor) -> torch.Tensor:
        """Scores without labels (evaluation): B×K choice scores, B×labels logits or B values."""
        dummy = torch.zeros(inputs["input_ids"].shape[0], dtype=torch.long, device=inputs["input_ids"].device)
        if self.task.kind == "regression":
            dummy = dummy.float()
        return self.forward(dummy, **inputs).logits

    # ------------------------------------------------------------------ save / load
    def save_pretrained(self, directory: str | Path) -> Path:
        directory = self.pretraining.save_pretrained(directory)
        (directory / TASK_FILE).write_text(json.dumps(asdict(self.task), indent=2) + "\n")
        if self.head is not None:
            save_file({k: v.detach().cpu().contiguous() for k, v in self.head.state_dict().items()},
                      str(directory / HEAD_FILE))
        return directory

    @classmethod
    def from_pretrained(cls, directory: str | Path, task: TaskSpec | None = None) -> InterBertForFinetuning:
        """A fine-tuned directory (with task.json), or a pretrained one plus `task` (a new head), in
        ``eval()`` mode like ``InterBertForPretraining.from_pretrained``."""
        directory = Path(directory)
        pretraining = InterBertForPretraining.from_pretrained(directory)
        saved = directory / TASK_FILE
        if saved.is_file():
            saved_task = TaskSpec(**json.loads(saved.read_text()))
            if task is not None and (task.name, task.kind, task.num_labels) != (
                    saved_task.name, saved_task.kind, saved_task.num_labels):
                raise ValueError(f"{directory} was fine-tuned for {saved_task.name} ({saved_task.kind}, "
                                 f"{saved_task.num_labels} labels), not for {task.name}; start from the "
                                 "pretrained model directory instead")
            task = task or saved_task
            model = cls(pretraining, task)
            if model.head is not None:
                model.head.load_state_dict(load_safetensors(directory / HEAD_FILE), strict=True)
                model.head_source = f"the fine-tuned head in {directory / HEAD_FILE}"
            return model.eval()
        if task is None:
            raise ValueError(f"{directory} has no {TASK_FILE}: say which task to fine-tune for")
        model = cls(pretraining, task)
        if task.kind == "multiple_choice" and (directory / TASK_HEADS_NAME).is_file():
            model.head_source = model._load_release_choice_head(directory / TASK_HEADS_NAME)
        return model.eval()

    def _load_release_choice_head(self, path: Path) -> str:
        """Copy the release's `vil_logit` into the choice head; says what was done."""
        assert isinstance(self.head, ChoiceHead)  # called for multiple-choice tasks only
        heads = load_safetensors(path)
        weight, bias = heads.get("vil_logit.weight"), heads.get("vil_logit.bias")
        if weight is None or bias is None:
            return f"a new head ({path} holds no vil_logit)"
        expected = self.head.vil_logit.weight.shape
        if weight.shape != expected:
            raise ValueError(f"{path}: vil_logit.weight has shape {tuple(weight.shape)}, the model's "
                             f"pooled size needs {tuple(expected)}; was it converted with another config?")
        self.head.vil_logit.load_state_dict({"weight": weight, "bias": bias})
        return f"the release's vil_logit from {path}"
