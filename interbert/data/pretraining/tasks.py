"""Which pretraining tasks a batch gets and at what rates: ``PretrainingTasks``."""
from __future__ import annotations

from dataclasses import dataclass


@dataclass
class PretrainingTasks:
    """Which tasks to apply and their rates (defaults: the paper's MSM + MRM + ITM).

    text_task: "msm" (segments of words), "mlm" (Table 2 baseline, independent word pieces) or
    "none" (no text masked);
    region_task: "mrm" (anchors + IoU > threshold groups), "mom" (independent regions) or "none";
    mrm_soft_labels: also return the detector class distribution of masked regions (KL variant);
    mask_mismatched_pairs: mask ITM negatives too (the paper's ITM input is the masked pair);
    mrm_matched_only: `mrm_positions` leave out mismatched pairs (the model config's flag of that name).
    """

    text_task: str = "msm"
    region_task: str = "mrm"
    msm_anchor_prob: float = 0.1
    msm_max_extra_words: int = 2
    mlm_token_prob: float = 0.15
    mask_token_prob: float = 0.8
    random_token_prob: float = 0.1
    mrm_anchor_prob: float = 0.1
    mrm_iou_threshold: float = 0.4
    mom_region_prob: float = 0.15
    mrm_soft_labels: bool = False
    itm_negative_prob: float = 0.5
    mask_mismatched_pairs: bool = True
    mrm_matched_only: bool = True

    def __post_init__(self):
        if self.text_task not in ("msm", "mlm", "none"):
            raise ValueError(f"text_task is {self.text_task!r}; choose 'msm', 'mlm' or 'none'")
        if self.region_task not in ("mrm", "mom", "none"):
            raise ValueError(f"region_task is {self.region_task!r}; choose 'mrm', 'mom' or 'none'")
