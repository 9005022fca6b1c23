"""Caption corpora → caption manifests (``{"image_id", "caption", "split", "source"}`` lines).

Formats and their image ids (the ids must match the feature store's keys):
- ``coco``: COCO captions JSON (``annotations[].image_id / caption``); id = str(image_id), the
  key bottom-up-attention TSVs use. Split: ``--split``, else from the file name (train/val/test).
- ``cc``: Conceptual Captions TSV, ``caption<TAB>url`` per line, no header. Split: ``--split``
  (default train).
- ``sbu``: SBU captions, either two line-aligned files (captions, then urls) or one JSON with
  ``captions`` and ``image_urls`` lists. Split: ``--split`` (default train).
- ``flickr30k``: Karpathy's split JSON (``images[].filename, split, sentences[].raw``); id = the
  file name without extension; split as in the file.

For ``cc`` and ``sbu`` the id rule (``--id-rule``) is ``index`` (default: the 0-based row index
in the file, as written by the usual download scripts), ``url-stem`` (the url's file name
without extension) or ``url-sha1`` (the first 16 hex digits of the url's SHA-1).
Empty captions are skipped and counted (``strict`` makes them errors); nothing else is dropped.
"""
from __future__ import annotations

import csv
import hashlib
import json
import os
import sys
from collections import Counter
from pathlib import Path, PurePosixPath
from typing import Iterable, Iterator, Optional
from urllib.parse import urlparse

from interbert.data.manifests import write_manifest
from interbert.data.text_files import NotUtf8Error, utf8_errors_named
from interbert.errors import UserError

FORMATS = ("coco", "cc", "sbu", "flickr30k")
ID_RULES = ("index", "url-stem", "url-sha1")


class CaptionFormatError(UserError, ValueError):
    """A caption file does not have the expected layout; the message names the file and line."""


def image_id_from_url(url: str, index: int, rule: str) -> str:
    """The image id of row ``index`` under ``rule`` (see the module docstring)."""
    if rule == "index":
        return str(index)
    if rule == "url-stem":
        return PurePosixPath(urlparse(url).path).stem
    if rule == "url-sha1":
        return hashlib.sha1(url.encode("utf-8")).hexdigest()[:16]
    raise ValueError(f"unknown id rule {rule!r}; choose one of {', '.join(ID_RULES)}")


def _load_json(path: str, needed: str) -> dict:
    try:
        with open(path, encoding="utf-8") as handle, utf8_errors_named(path):
            data = json.load(handle)
    except NotUtf8Error:
        raise
    except ValueError as error:
        raise CaptionFormatError(f"{path}: not valid JSON ({error})") from None
    if not isinstance(data, dict) or needed not in data:
        raise CaptionFormatError(f"{path}: expected a JSON object with a {needed!r} list")
    return data


def split_from_file_name(path: str) -> str:
    name = Path(path).name.lower()
    for split in ("train", "val", "test"):
        if split in name:
            return split
    raise CaptionFormatError(f"{path}: cannot tell the split from the file name; pass --split")


def coco_captions(path: str, split: Optional[str] = None) -> Iterator[tuple]:
    """``(where, entry)`` per annotation of a COCO captions JSON file."""
    split = split or split_from_file_name(path)
    for i, annotation in enumerate(_load_json(path, "annotations")["annotations"]):
        where = f"{path}: annotations[{i}]"
        try:
            yield where, {"image_id": str(annotation["image_id"]), "caption": annotation["caption"], "split": split}
        except (KeyError, TypeError):
            raise CaptionFormatError(f"{where}: an annotation needs image_id and caption") from None


def cc_captions(path: str, split: Optional[str] = None, id_rule: str = "index") -> Iterator[tuple]:
    """``(where, entry)`` per row of a Conceptual Captions ``caption<TAB>url`` file."""
    csv.field_size_limit(min(sys.maxsize, 2 ** 31 - 1))
    with open(path, newline="", encoding="utf-8") as handle, utf8_errors_named(path):
        for index, row in enumerate(csv.reader(handle, delimiter="\t", quoting=csv.QUOTE_NONE)):
            where = f"{path}:{index + 1}"
            if len(row) != 2:
                raise CaptionFormatError(f"{where}: {len(row)} columns; a Conceptual Captions line is "
                                         "caption<TAB>url")
            caption, url = row
            yield where, {"image_id": image_id_from_url(url, index, id_rule), "caption": caption,
                          "split": split or "train"}


def sbu_captions(paths: list, split: Optional[str] = None, id_rule: str = "index") -> Iterator[tuple]:
    """``(where, entry)`` per SBU photo: ``[captions.txt, urls.txt]`` or ``[sbu.json]``."""
    if len(paths) == 1:
        data = _load_json(paths[0], "captions")
        captions, urls = data["captions"], data.get("image_urls")
        if urls is None:
            raise CaptionFormatError(f"{paths[0]}: an SBU JSON needs 'captions' and 'image_urls' lists")
        source = paths[0]
    elif len(paths) == 2:
        with open(paths[0], encoding="utf-8") as c, open(paths[1], encoding="utf-8") as u, \
                utf8_errors_named(*paths):
            captions = [line.rstrip("\n") for line in c]
            urls = [line.strip() for line in u]
        source = paths[0]
    else:
        raise CaptionFormatError("sbu takes one JSON file or two files: captions then urls")
    if len(captions) != len(urls):
        raise CaptionFormatError(f"{' and '.join(paths)}: {len(captions)} captions but {len(urls)} urls; the "
                                 "files must be line-aligned")
    for index, (caption, url) in enumerate(zip(captions, urls)):
        yield f"{source}:{index + 1}", {"image_id": image_id_from_url(url, index, id_rule), "caption": caption,
                                        "split": split or "train"}


def flickr30k_captions(path: str, split: Optional[str] = None) -> Iterator[tuple]:
    """``(where, entry)`` per sentence of Karpathy's ``dataset_flickr30k.json``."""
    for i, image in enumerate(_load_json(path, "images")["images"]):
        try:
            image_id = Path(image["filename"]).stem
            image_split, sentences = image["split"], image["sentences"]
        except (KeyError, TypeError):
            raise CaptionFormatError(f"{path}: images[{i}] needs filename, split and sentences") from None
        for j, sentence in enumerate(sentences):
            yield f"{path}: images[{i}].sentences[{j}]", {"image_id": image_id, "caption": sentence.get("raw", ""),
                                                           "split": split or image_split}


def read_captions(fmt: str, inputs: list, split: Optional[str] = None, id_rule: str = "index") -> Iterator[tuple]:
    """``(where, entry)`` over ``inputs`` in format ``fmt`` (one of FORMATS)."""
    if fmt == "sbu":
        yield from sbu_captions(inputs, split, id_rule)
        return
    for path in inputs:
        if fmt == "coco":
            yield from coco_captions(path, split)
        elif fmt == "cc":
            yield from cc_captions(path, split, id_rule)
        elif fmt == "flickr30k":
            yield from flickr30k_captions(path, split)
        else:
            raise ValueError(f"unknown caption format {fmt!r}; choose one of {', '.join(FORMATS)}")


def convert_captions(fmt: str, inputs: Iterable, out: str | os.PathLike, split: Optional[str] = None,
                     id_rule: str = "index", strict: bool = False, overwrite: bool = False,
                     splits: Optional[Counter] = None) -> tuple:
    """Write the manifest ``out`` (an existing one only with ``overwrite``); returns ``(lines
    written, skipped Counter, first skipped places)``; ``splits`` counts the lines written per split."""
    if os.path.lexists(out) and not overwrite:
        raise FileExistsError(f"{out} already exists; choose another --out or pass --overwrite to replace it")
    inputs = [str(p) for p in inputs]
    skipped: Counter = Counter()
    examples: list = []

    def entries():
        for where, entry in read_captions(fmt, inputs, split, id_rule):
            text = entry["caption"]
            if text is not None and not isinstance(text, str):
                raise CaptionFormatError(f"{where}: the caption of image {entry['image_id']!r} is {text!r}, not text")
            entry["caption"] = " ".join((text or "").split())  # null counts as an empty caption
            if not entry["caption"]:
                if strict:
                    raise CaptionFormatError(f"{where}: empty caption for image {entry['image_id']!r} (without "
                                             "--strict it is skipped and counted)")
                skipped["empty caption"] += 1
                if len(examples) < 5:
                    examples.append(where)
                continue
            entry["source"] = fmt
            if splits is not None:
                splits[entry["split"]] += 1
            yield entry

    try:
        count = write_manifest(out, entries(), replace=overwrite)
    except FileExistsError:
        raise FileExistsError(f"{out} appeared while this run was writing it (another process?); it was left as "
                              "it is: choose another --out or pass --overwrite") from None
    return count, skipped, examples
