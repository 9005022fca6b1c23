"""Model configuration: one dataclass, named presets, JSON round trip, validation.

Presets (see docs/model.md, "Presets"):
  paper-base    the paper's appendix: 12 interaction layers, 6 + 6 extraction layers
  release-base  the authors' released checkpoint: 6 interaction layers, 6 text extraction
                layers (BERT layers 6-11 at init), 6 image extraction layers of 8 heads
                with hidden dropout 0.2
  tiny          2 / 1 / 1 narrow layers for tests
  tiny-demo     tiny without dropout, MSM weight 0.3: the CPU demo, trained from scratch in minutes
"""
from __future__ import annotations

import dataclasses
import json
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from interbert import __version__

MODEL_TYPE = "interbert"
MRM_LOSSES = ("kl", "ce")
ATTENTION_IMPLEMENTATIONS = ("sdpa", "eager")


@dataclass
class StreamConfig:
    """Width of one stack of post-LN BERT layers: its heads, FFN size and dropout."""

    num_layers: int
    num_attention_heads: int = 12
    intermediate_size: int = 3072
    hidden_dropout_prob: float = 0.1
    attention_probs_dropout_prob: float = 0.1


PRETRAINING_TASKS = ("msm", "mrm", "itm", "mlm", "mom")
TEXT_TASKS, REGION_TASKS = ("msm", "mlm"), ("mrm", "mom")


def parse_pretraining_tasks(value: str) -> tuple[str, ...]:
    """"msm,mrm,itm" -> ("msm", "mrm", "itm"), checked: known names, at least one, at most one text
    task and one region task."""
    names = tuple(dict.fromkeys(name.strip().lower() for name in str(value).split(",") if name.strip()))
    unknown = [name for name in names if name not in PRETRAINING_TASKS]
    if unknown or not names:
        raise ValueError(f"{'unknown task(s) ' + ', '.join(unknown) if unknown else 'no task'} in {value!r}; "
                         f"choose from {', '.join(PRETRAINING_TASKS)}, comma-separated")
    for kind, group in (("text", TEXT_TASKS), ("region", REGION_TASKS)):
        if len(set(group) & set(names)) > 1:
            raise ValueError(f"{' and '.join(group)} are both {kind} tasks; choose one")
    return names


@dataclass
class InterBertConfig:
    # Text embeddings (BERT's).
    vocab_size: int = 30522
    max_position_embeddings: int = 512
    type_vocab_size: int = 2
    # Region embeddings.
    region_feature_size: int = 2048
    region_location_size: int = 5
    # Shared width of every stack and of the embeddings.
    hidden_size: int = 768
    layer_norm_eps: float = 1e-12
    initializer_range: float = 0.02
    embedding_dropout_prob: float = 0.1
    # The single-stream interaction module and the two-stream extraction module.
    interaction: StreamConfig = field(default_factory=lambda: StreamConfig(12))
    text_extraction: StreamConfig = field(default_factory=lambda: StreamConfig(6))
    image_extraction: StreamConfig = field(default_factory=lambda: StreamConfig(6))
    # Poolers (first token -> Linear -> ReLU) and heads.
    pooled_size: int = 1024
    itm_dropout_prob: float = 0.1
    num_region_classes: int = 1601
    # Pretraining objective: loss = msm_weight*MSM + mrm_weight*MRM + itm_weight*ITM.
    msm_weight: float = 1.0
    mrm_weight: float = 1.0
    itm_weight: float = 1.0
    mrm_loss: str = "kl"  # "kl": KL to the detector's class distribution (as released); "ce": class
    mrm_matched_only: bool = True  # as released: MRM counts only on matched pairs
    # Which tasks pretraining runs (comma-separated): the paper's "msm,mrm,itm"; Table 2's baseline
    # "mlm,mom,itm" (MLM: 15% of word pieces, MOM: 15% of regions); any subset with at most one
    # text task (msm or mlm) and one region task (mrm or mom).
    pretraining_tasks: str = "msm,mrm,itm"
    attention_implementation: str = "sdpa"

    def __post_init__(self) -> None:
        for name in ("interaction", "text_extraction", "image_extraction"):
            value = getattr(self, name)
            if isinstance(value, dict):
                try:
                    setattr(self, name, StreamConfig(**value))
                except TypeError as error:
                    raise ValueError(f"InterBertConfig.{name}: {error}") from None
        self.validate()

    # ------------------------------------------------------------------ validation
    def validate(self) -> None:
        problems = []
        for name, stream in self.streams().items():
            if stream.num_layers < 0:
                problems.append(f"{name}.num_layers must be >= 0, got {stream.num_layers}")
            if stream.num_attention_heads <= 0 or self.hidden_size % stream.num_attention_heads:
                problems.append(
                    f"hidden_size {self.hidden_size} is not divisible by "
                    f"{name}.num_attention_heads {stream.num_attention_heads}; pick a head count "
                    "that divides the hidden size"
                )
            for dropout in ("hidden_dropout_prob", "attention_probs_dropout_prob"):
                if not 0.0 <= getattr(stream, dropout) < 1.0:
                    problems.append(f"{name}.{dropout} must lie in [0, 1)")
        if self.interaction.num_layers < 1:
            problems.append("interaction.num_layers must be at least 1")
        for name in ("vocab_size", "hidden_size", "pooled_size", "num_region_classes",
                     "region_feature_size", "max_position_embeddings", "type_vocab_size"):
            if getattr(self, name) <= 0:
                problems.append(f"{name} must be positive, got {getattr(self, name)}")
        if self.region_location_size != 5:
            problems.append("region_location_size must be 5 ([x1/w, y1/h, x2/w, y2/h, area])")
        if self.mrm_loss not in MRM_LOSSES:
            problems.append(f"mrm_loss must be one of {MRM_LOSSES}, got {self.mrm_loss!r}")
        if self.attention_implementation not in ATTENTION_IMPLEMENTATIONS:
            problems.append(
                f"attention_implementation must be one of {ATTENTION_IMPLEMENTATIONS}, "
                f"got {self.attention_implementation!r}"
            )
        try:
            self.pretraining_tasks = ",".join(parse_pretraining_tasks(self.pretraining_tasks))
        except ValueError as error:
            problems.append(f"pretraining_tasks: {error}")
        for name in ("msm_weight", "mrm_weight", "itm_weight"):
            if getattr(self, name) < 0:
                problems.append(f"{name} must be >= 0, got {getattr(self, name)}")
        if problems:
            raise ValueError("invalid InterBertConfig:\n  " + "\n  ".join(problems))

    def streams(self) -> dict[str, StreamConfig]:
        return {
            "interaction": self.interaction,
            "text_extraction": self.text_extraction,
            "image_extraction": self.image_extraction,
        }

    # ------------------------------------------------------------------ presets
    @classmethod
    def from_preset(cls, name: str, **overrides: Any) -> InterBertConfig:
        if name not in PRESETS:
            raise ValueError(f"unknown preset {name!r}; choose one of {sorted(PRESETS)}")
        values = dataclasses.asdict(PRESETS[name]())
        values.update(overrides)
        return cls(**values)

    # ------------------------------------------------------------------ JSON
    def to_dict(self) -> dict[str, Any]:
        """The fields, with ``model_type`` and the ``interbert_version`` that wrote them (as
        Hugging Face configs carry theirs)."""
        return {"model_type": MODEL_TYPE, "interbert_version": __version__, **dataclasses.asdict(self)}

    def to_json_file(self, path: str | Path) -> None:
        Path(path).write_text(json.dumps(self.to_dict(), indent=2, sort_keys=True) + "\n")

    @classmethod
    def from_dict(cls, values: dict[str, Any], source: str = "<dict>") -> InterBertConfig:
        """Fields from ``values``. A ``model_type`` other than "interbert" is an error; keys this
        version does not know (a newer writer's, or a typo) are ignored with a warning naming them."""
        values = dict(values)
        model_type = values.pop("model_type", MODEL_TYPE)
        if model_type != MODEL_TYPE:
            raise ValueError(f"{source}: model_type is {model_type!r}, not {MODEL_TYPE!r}: not an InterBERT config")
        values.pop("interbert_version", None)
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            warnings.warn(f"{source}: ignoring unknown InterBertConfig keys {unknown} (a newer version's, or a "
                          f"typo); known keys are {sorted(known)}", stacklevel=2)
            values = {key: value for key, value in values.items() if key in known}
        try:
            return cls(**values)
        except ValueError as error:
            raise ValueError(f"{source}: {error}") from None

    @classmethod
    def from_json_file(cls, path: str | Path) -> InterBertConfig:
        path = Path(path)
        try:
            values = json.loads(path.read_text())
        except FileNotFoundError:
            raise FileNotFoundError(f"model config {path} does not exist") from None
        except json.JSONDecodeError as error:
            raise ValueError(f"{path}: not valid JSON ({error})") from None
        if not isinstance(values, dict):
            raise ValueError(f"{path}: expected a JSON object of InterBertConfig fields")
        return cls.from_dict(values, source=str(path))


def _paper_base() -> InterBertConfig:
    return InterBertConfig()


def _release_base() -> InterBertConfig:
    return InterBertConfig(
        interaction=StreamConfig(6),
        text_extraction=StreamConfig(6),
        image_extraction=StreamConfig(6, num_attention_heads=8, hidden_dropout_prob=0.2),
    )


def _tiny() -> InterBertConfig:
    return InterBertConfig(
        hidden_size=128,
        pooled_size=256,
        interaction=StreamConfig(2, num_attention_heads=4, intermediate_size=512),
        text_extraction=StreamConfig(1, num_attention_heads=4, intermediate_size=512),
        image_extraction=StreamConfig(1, num_attention_heads=4, intermediate_size=512),
    )


def _tiny_demo() -> InterBertConfig:
    # Dropout off: trained from scratch on the synthetic corpus for a few thousand steps, the
    # model has nothing to regularise yet, and with dropout it does not start matching words
    # to regions within the CPU demo's budget.
    # MSM weighted 0.3: with equal weights, the text-only solution of MSM (template words)
    # dominates the shared layers' early gradients and words are matched to regions only after
    # ~1,000 steps; at 0.3, ITM leaves chance after ~750 steps and is ahead from then on.
    config = _tiny()
    config.msm_weight = 0.3
    config.embedding_dropout_prob = config.itm_dropout_prob = 0.0
    for stream in config.streams().values():
        stream.hidden_dropout_prob = stream.attention_probs_dropout_prob = 0.0
    return config


PRESETS = {"paper-base": _paper_base, "release-base": _release_base, "tiny": _tiny,
           "tiny-demo": _tiny_demo}
