"""A recorded baseline of benchmark ratios, and the comparison that flags a regression.

A baseline file holds the machine it was measured on, the command, and named ratios (figures that
compare two things measured in the same run, so that they travel between runs better than raw
speeds do: ours / the hf-eager composition, the matmul floor / the measured step). `compare` flags
every ratio of the new run that fell by more than `tolerance` (15% by default) below the recorded one.
"""
from __future__ import annotations

import json
from pathlib import Path

TOLERANCE = 0.15


def write_baseline(path: str | Path, ratios: dict[str, float], machine: dict, command: str) -> None:
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    Path(path).write_text(json.dumps({"machine": machine, "command": command, "ratios": ratios}, indent=2) + "\n")


def read_baseline(path: str | Path) -> dict:
    """The recorded baseline; a file that is not one is named in a ValueError."""
    try:
        data = json.loads(Path(path).read_text())
    except (OSError, json.JSONDecodeError) as error:
        raise ValueError(f"{path}: not a readable baseline ({error})") from None
    if not isinstance(data, dict) or not isinstance(data.get("ratios"), dict):
        raise ValueError(f"{path}: no \"ratios\" object: write one with --write-baseline")
    return data


def compare(ratios: dict[str, float], baseline: dict, tolerance: float = TOLERANCE) -> tuple[list[str], list[str]]:
    """(lines for every ratio both runs have, the regressions among them: a fall of more than `tolerance`)."""
    lines, regressions = [], []
    for name, old in baseline["ratios"].items():
        if name not in ratios:
            lines.append(f"  {name}: recorded {old:.3f}, not measured in this run")
            continue
        new = ratios[name]
        change = new / old - 1 if old else 0.0
        line = f"  {name}: {old:.3f} -> {new:.3f} ({100 * change:+.0f}%)"
        if change < -tolerance:
            line += f"  REGRESSION (fell by more than {100 * tolerance:.0f}%)"
            regressions.append(name)
        lines.append(line)
    return lines, regressions
