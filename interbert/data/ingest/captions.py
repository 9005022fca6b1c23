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

Every input may be a file, a pipe or FIFO, ``-`` (stdin), or gzip / bzip2 / zip (``input_streams``);
of a zip archive the members of the format are read in name order (``FORMAT_MEMBERS``: COCO's
``captions_*.json`` of ``annotations_trainval2014.zip``, Karpathy's ``dataset_flickr30k.json`` of
``caption_datasets.zip``, ...), each COCO member taking its split from its own name.
"""
from __future__ import annotations

import hashlib
import json
import os
from collections import Counter
from collections.abc import Iterable, Iterator
from pathlib import Path, PurePosixPath
from urllib.parse import urlparse

from interbert.data.text.input_streams import check_input, whole_input, whole_parts
from interbert.data.text.manifests import write_manifest
from interbert.data.text.utf8 import decode_utf8, utf8_lines
from interbert.errors import UserError

FORMATS = ("coco", "cc", "sbu", "flickr30k")
ID_RULES = ("index", "url-stem", "url-sha1")
FORMAT_MEMBERS = {"coco": ("captions_*.json",), "cc": ("*.tsv",), "sbu": ("*.json",), "sbu-text": ("*.txt",),
                  "flickr30k": ("*flickr30k*.json",)}  # the zip members each format reads


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


def parse_json(data: bytes, name: str, needed: str) -> dict:
    """The JSON object of the input ``name``, which must hold the list ``needed``."""
    text = decode_utf8(data, name)
    try:
        loaded = json.loads(text)
    except ValueError as error:
        raise CaptionFormatError(f"{name}: not valid JSON ({error})") from None
    if not isinstance(loaded, dict) or needed not in loaded:
        raise CaptionFormatError(f"{name}: expected a JSON object with a {needed!r} list")
    return loaded


def json_parts(path: str, needed: str, members: tuple) -> Iterator[tuple]:
    """``(part name, object)`` of each JSON part of the input at ``path`` (see ``parse_json``)."""
    for name, data in whole_parts(path, members):
        yield name, parse_json(data, name, needed)


def split_from_file_name(name: str) -> str:
    """train, val or test from the name of a file (or of a zip member: the part after ``!``)."""
    base = Path(name.rsplit("!", 1)[-1]).name.lower()
    for split in ("train", "val", "test"):
        if split in base:
            return split
    raise CaptionFormatError(f"{name}: cannot tell the split from the file name; pass --split")


def coco_captions(path: str, split: str | None = None) -> Iterator[tuple]:
    """``(where, entry)`` per annotation of a COCO captions JSON input."""
    for name, data in json_parts(path, "annotations", FORMAT_MEMBERS["coco"]):
        part_split = split or split_from_file_name(name)
        for i, annotation in enumerate(data["annotations"]):
            where = f"{name}: annotations[{i}]"
            try:
                yield where, {"image_id": str(annotation["image_id"]), "caption": annotation["caption"],
                              "split": part_split}
            except (KeyError, TypeError):
                raise CaptionFormatError(f"{where}: an annotation needs image_id and caption") from None


def cc_captions(path: str, split: str | None = None, id_rule: str = "index") -> Iterator[tuple]:
    """``(where, entry)`` per row of a Conceptual Captions ``caption<TAB>url`` input (no quoting);
    the row index (``--id-rule index``) counts from 0 in each file or zip member."""
    for name, number, text in utf8_lines(path, FORMAT_MEMBERS["cc"]):
        where = f"{name}:{number}"
        row = text.rstrip("\r\n").split("\t")
        if len(row) != 2:
            raise CaptionFormatError(f"{where}: {len(row)} columns; a Conceptual Captions line is caption<TAB>url")
        caption, url = row
        yield where, {"image_id": image_id_from_url(url, number - 1, id_rule), "caption": caption,
                      "split": split or "train"}


def sbu_captions(paths: list, split: str | None = None, id_rule: str = "index") -> Iterator[tuple]:
    """``(where, entry)`` per SBU photo: ``[captions.txt, urls.txt]`` or ``[sbu.json]``."""
    if len(paths) == 1:
        source, whole = whole_input(paths[0], FORMAT_MEMBERS["sbu"])
        data = parse_json(whole, source, "captions")
        captions, urls = data["captions"], data.get("image_urls")
        if urls is None:
            raise CaptionFormatError(f"{source}: an SBU JSON needs 'captions' and 'image_urls' lists")
    elif len(paths) == 2:
        members = FORMAT_MEMBERS["sbu-text"]
        source = paths[0]
        captions = [text.rstrip("\r\n") for _, _, text in utf8_lines(paths[0], members)]
        urls = [text.strip() for _, _, text in utf8_lines(paths[1], members)]
    else:
        raise CaptionFormatError("sbu takes one JSON file or two files: captions then urls")
    if len(captions) != len(urls):
        raise CaptionFormatError(f"{' and '.join(paths)}: {len(captions)} captions but {len(urls)} urls; the "
                                 "files must be line-aligned")
    for index, (caption, url) in enumerate(zip(captions, urls)):
        yield f"{source}:{index + 1}", {"image_id": image_id_from_url(url, index, id_rule), "caption": caption,
                                        "split": split or "train"}


def flickr30k_captions(path: str, split: str | None = None) -> Iterator[tuple]:
    """``(where, entry)`` per sentence of Karpathy's ``dataset_flickr30k.json``."""
    for name, data in json_parts(path, "images", FORMAT_MEMBERS["flickr30k"]):
        for i, image in enumerate(data["images"]):
            try:
                image_id = Path(image["filename"]).stem
                image_split, sentences = image["split"], image["sentences"]
            except (KeyError, TypeError):
                raise CaptionFormatError(f"{name}: images[{i}] needs filename, split and sentences") from None
            for j, sentence in enumerate(sentences):
                yield f"{name}: images[{i}].sentences[{j}]", {"image_id": image_id, "caption": sentence.get("raw", ""),
                                                               "split": split or image_split}


def read_captions(fmt: str, inputs: list, split: str | None = None, id_rule: str = "index") -> Iterator[tuple]:
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


def convert_captions(fmt: str, inputs: Iterable, out: str | os.PathLike, split: str | None = None,
                     id_rule: str = "index", strict: bool = False, overwrite: bool = False,
                     splits: Counter | None = None) -> tuple:
    """Write the manifest ``out`` (an existing one only with ``overwrite``); returns ``(lines
    written, skipped Counter, first skipped places)``; ``splits`` counts the lines written per split."""
    if os.path.lexists(out) and not overwrite:
        raise FileExistsError(f"{out} already exists; choose another --out or pass --overwrite to replace it")
    inputs = [str(p) for p in inputs]
    if inputs.count("-") > 1:
        raise CaptionFormatError("- (stdin) is given more than once; it can be read only once")
    for path in inputs:
        check_input(path)
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
