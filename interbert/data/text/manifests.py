"""Caption manifests: JSON lines ``{"image_id", "caption", "split", "source"}``."""
from __future__ import annotations

import json
import os
from collections.abc import Iterable, Iterator
from pathlib import Path

from interbert.data.text.utf8 import utf8_errors_named
from interbert.errors import UserError

MANIFEST_KEYS = ("image_id", "caption", "split", "source")
# Split names the commands know (Karpathy's Flickr30K and COCO files add restval: extra training
# images). Lines of another split are counted and named, so that a misspelt split is never lost silently.
KNOWN_SPLITS = ("train", "val", "test", "restval")


def unknown_splits_note(counts: dict) -> str:
    """A note naming the split names of ``counts`` (split → lines) that are not KNOWN_SPLITS, or ''."""
    unknown = {name: n for name, n in sorted(counts.items()) if name not in KNOWN_SPLITS}
    if not unknown:
        return ""
    listed = ", ".join(f"{name!r} ({n} lines)" for name, n in unknown.items())
    return (f"splits {listed} are not one of {', '.join(KNOWN_SPLITS)}: a misspelt split's lines are never "
            "trained on or evaluated; rename them, or name that split explicitly")


class ManifestError(UserError, ValueError):
    """A manifest line is malformed; the message names the file and line."""


def read_manifest(path: str | os.PathLike) -> Iterator[tuple]:
    """``(line_number, entry)`` for every non-blank line (1-based line numbers).

    Raises ManifestError for a line that is not a JSON object with the four keys.
    """
    with open(path, encoding="utf-8") as handle, utf8_errors_named(path):
        for line_number, line in enumerate(handle, 1):
            if not line.strip():
                continue
            try:
                entry = json.loads(line)
            except ValueError as error:
                raise ManifestError(f"{path}:{line_number}: not JSON ({error}); each line must be one "
                                    "JSON object") from None
            if not isinstance(entry, dict) or any(key not in entry for key in ("image_id", "caption")):
                raise ManifestError(f"{path}:{line_number}: a manifest line needs at least 'image_id' and "
                                    f"'caption' (keys {', '.join(MANIFEST_KEYS)})")
            entry["image_id"] = str(entry["image_id"])
            yield line_number, entry


def write_manifest(path: str | os.PathLike, entries: Iterable[dict], replace: bool = True) -> int:
    """Write ``entries`` as JSON lines through a temporary file renamed on success; returns the count.
    ``replace=False``: an existing ``path`` (even one that appears meanwhile) is never replaced:
    FileExistsError."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(f"{path}.tmp-{os.getpid()}")
    count = 0
    try:
        with open(tmp, "w", encoding="utf-8") as handle:
            for entry in entries:
                handle.write(json.dumps({key: entry[key] for key in MANIFEST_KEYS}, ensure_ascii=False))
                handle.write("\n")
                count += 1
        if replace:
            os.replace(tmp, path)
        else:
            os.link(tmp, path)  # fails if path exists, atomically
    finally:
        if tmp.exists():
            tmp.unlink()
    return count
