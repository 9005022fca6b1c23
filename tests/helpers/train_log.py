"""What a run wrote to <output>/train_log.jsonl (one JSON record a line)."""
from __future__ import annotations

import json
from pathlib import Path


def read_train_log(output: Path, *, every_record: bool = False) -> list[dict]:
    """The records of `output`/train_log.jsonl in order: the optimizer steps' (those with a loss), or
    with every_record=True all of them."""
    records = [json.loads(line) for line in (output / "train_log.jsonl").read_text().splitlines()]
    return records if every_record else [record for record in records if "loss" in record]


def logged_lines(output: Path) -> int:
    """The lines of `output`/train_log.jsonl so far (0 before it exists), a line still being written
    included: for polling a run that goes on."""
    path = output / "train_log.jsonl"
    return len(path.read_text().splitlines()) if path.is_file() else 0
