"""What pretraining shows: the tasks' slots, the scalars a run writes and its console line."""
from __future__ import annotations

TASKS = ("msm", "mrm", "itm")
# Every scalar a pretraining run writes (tests read them back).
TRAIN_SCALARS = (
    "train/loss", *(f"train/loss_{t}" for t in TASKS), *(f"train/accuracy_{t}" for t in TASKS),
    "train/learning_rate", "train/loss_scale", "train/skipped_steps", "train/grad_norm",
    "perf/samples_per_second", "perf/tflops", "perf/mfu", "perf/data_wait_fraction",
)


def console_line(step: int, total_steps: int, epoch: int, values: dict, eta: str, tasks=TASKS) -> str:
    """One line per logging window; `tasks`: the names of the tasks that run (e.g. mlm, mom, itm)."""
    losses = " ".join(f"{t} {values.get(f'train/loss_{t}', float('nan')):.3f}" for t in tasks)
    accuracies = " ".join(f"{t} {values.get(f'train/accuracy_{t}', float('nan')):.2f}"
                          for t in tasks)
    scale = values.get("train/loss_scale")
    parts = [
        f"step {step}/{total_steps}",
        f"epoch {epoch}",
        f"loss {values['train/loss']:.4f} ({losses})",
        f"acc {accuracies}",
        f"lr {values['train/learning_rate']:.2e}",
        f"gnorm {values.get('train/grad_norm', float('nan')):.2f}",
    ]
    if scale is not None and scale != 1.0:
        parts.append(f"scale {scale:g} skipped {int(values.get('train/skipped_steps', 0))}")
    parts += [
        f"{values['perf/samples_per_second']:.1f} samples/s",
        f"{values['perf/tflops'] * 1e3:.2f} GFLOP/s",
        f"MFU {100 * values['perf/mfu']:.1f}%",
        f"data {100 * values['perf/data_wait_fraction']:.0f}%",
        f"ETA {eta}",
    ]
    return " | ".join(parts)
