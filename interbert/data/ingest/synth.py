"""A synthetic corpus in the real formats, with structure a model can learn.

Each image holds 3–5 objects drawn from ``OBJECT_WORDS`` (single WordPiece tokens of the uncased
BERT vocabulary), each with a colour from ``COLOUR_WORDS``. An object appears as a group of 1–4
overlapping boxes (IoU > 0.4 with the group's first box), whose features are the class prototype
plus a colour prototype plus noise; low-confidence clutter regions fill the image up to 10–36
regions. Detector labels are ``1 + object index`` (label 0 is the background, as in Visual
Genome's 1,601 classes) and the optional class distribution puts most mass on that label.
Captions name 2–3 of the image's objects (often with their colours) through templates, so a
caption is determined by the image's content and retrieval can be learnt.

Output under DIR: ``features/`` (the feature store), ``captions.jsonl`` (one manifest, every line
with its ``split``: the last ``test_images`` images are "test", the ``val_images`` before them
"val", the rest "train"), and ``corpus.json`` (the vocabulary of objects and colours, counts).
"""
from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import numpy as np
from tqdm import tqdm

from interbert.data.store.metadata import DEFAULT_FEATURE_SIZE, DEFAULT_NUM_CLASSES
from interbert.data.store.record_format import RegionRecord
from interbert.data.store.writer import FeatureStoreWriter
from interbert.data.text.manifests import write_manifest

OBJECT_WORDS = ("dog cat car tree horse bird man woman boy girl bus train boat chair table bed cup ball bike "
                "book clock lamp phone kite pizza cake apple banana sheep cow bear elephant truck plane bench "
                "bottle bowl knife spoon couch laptop door window fence flower rock hat shoe bag umbrella "
                "sign bridge tower house fish duck lion tiger wolf fox rabbit pig frog guitar").split()
COLOUR_WORDS = "red blue green yellow black white brown pink".split()
TEMPLATES = (
    "{a} next to {b}", "{a} and {b}", "there is {a} near {b}", "a photo of {a} with {b}",
    "{a} beside {b} and {c}", "an image showing {a}, {b} and {c}", "{a} in front of {b}",
    "{a} together with {b} and {c}",
)
SYNTH_FEATURE_SIZE = DEFAULT_FEATURE_SIZE


def _phrase(word: str, colour: str | None) -> str:
    head = f"{colour} {word}" if colour else word
    return ("an " if head[0] in "aeiou" else "a ") + head


def default_split_sizes(num_images: int) -> tuple:
    """(val_images, test_images) when not given: 100 each from 1,000 images up, else a tenth (at least 1)."""
    size = 100 if num_images >= 1000 else max(1, num_images // 10)
    return size, size


class _Prototypes:
    def __init__(self, rng: np.random.Generator, feature_size: int, num_objects: int):
        # Non-negative and sparse-ish, like the ReLU outputs of a Faster R-CNN head.
        self.objects = np.maximum(rng.normal(0.0, 1.0, (num_objects, feature_size)), 0.0) * 1.5
        self.colours = np.maximum(rng.normal(0.0, 1.0, (len(COLOUR_WORDS), feature_size)), 0.0) * 0.6


def _jittered(box: np.ndarray, rng: np.random.Generator, width: float, height: float) -> np.ndarray:
    w, h = box[2] - box[0], box[3] - box[1]
    shift = rng.uniform(-0.08, 0.08, 4) * np.array([w, h, w, h])
    out = box + shift
    out[[0, 2]] = np.clip(out[[0, 2]], 0, width)
    out[[1, 3]] = np.clip(out[[1, 3]], 0, height)
    return out


def synth_image(image_id: str, rng: np.random.Generator, prototypes: _Prototypes, class_probs: bool) -> tuple:
    """One synthetic image: its RegionRecord and the (object, colour) indices of its main objects."""
    num_words = prototypes.objects.shape[0]
    width, height = float(rng.integers(400, 801)), float(rng.integers(300, 601))
    num_objects = int(rng.integers(3, 6))
    objects = rng.choice(num_words, size=num_objects, replace=False)
    colours = rng.integers(len(COLOUR_WORDS), size=num_objects)
    boxes, kinds, confidences = [], [], []
    for obj, colour in zip(objects, colours):
        w, h = rng.uniform(0.2, 0.5) * width, rng.uniform(0.2, 0.5) * height
        x, y = rng.uniform(0, width - w), rng.uniform(0, height - h)
        base = np.array([x, y, x + w, y + h])
        for copy in range(int(rng.integers(1, 5))):
            boxes.append(base if copy == 0 else _jittered(base, rng, width, height))
            kinds.append((obj, colour))
            confidences.append(rng.uniform(0.6, 0.99))
    total = max(len(boxes), int(rng.integers(10, 37)))
    others = np.setdiff1d(np.arange(num_words), objects)
    while len(boxes) < total:  # small, unmentioned clutter
        w, h = rng.uniform(0.05, 0.15) * width, rng.uniform(0.05, 0.15) * height
        x, y = rng.uniform(0, width - w), rng.uniform(0, height - h)
        boxes.append(np.array([x, y, x + w, y + h]))
        kinds.append((int(rng.choice(others)), int(rng.integers(len(COLOUR_WORDS)))))
        confidences.append(rng.uniform(0.1, 0.5))
    kinds_arr = np.array(kinds)
    features = (prototypes.objects[kinds_arr[:, 0]] + prototypes.colours[kinds_arr[:, 1]]
                + np.abs(rng.normal(0.0, 0.3, (len(boxes), prototypes.objects.shape[1]))))
    labels = (kinds_arr[:, 0] + 1).astype(np.int32)
    probs = None
    if class_probs:
        probs = np.zeros((len(boxes), DEFAULT_NUM_CLASSES), dtype=np.float32)
        probs[:, 1:num_words + 1] = rng.uniform(0.0, 1.0, (len(boxes), num_words)) ** 4
        probs[np.arange(len(boxes)), labels] = 8.0
        probs /= probs.sum(axis=1, keepdims=True)
    record = RegionRecord(image_id=image_id, width=width, height=height, features=features.astype(np.float16),
                          boxes=np.array(boxes, dtype=np.float32), labels=labels,
                          confidences=np.array(confidences, dtype=np.float32), class_probs=probs)
    return record, list(zip(objects.tolist(), colours.tolist()))


def synth_captions(objects: list, count: int, rng: np.random.Generator) -> list:
    """``count`` captions naming 2–3 of ``objects`` ((object, colour) index pairs)."""
    captions = []
    for _ in range(count):
        template = TEMPLATES[int(rng.integers(len(TEMPLATES)))]
        slots = 3 if "{c}" in template else 2
        chosen = rng.choice(len(objects), size=min(slots, len(objects)), replace=False)
        phrases = [_phrase(OBJECT_WORDS[objects[i][0]], COLOUR_WORDS[objects[i][1]] if rng.random() < 0.7 else None)
                   for i in chosen]
        captions.append(template.format(**dict(zip("abc", phrases))))
    return captions


def synthesize_corpus(out_dir: str | os.PathLike, num_images: int, seed: int = 0, captions_per_image: int = 5,
                      val_images: int | None = None, test_images: int | None = None,
                      class_probs: bool | None = None, overwrite: bool = False, progress: bool = True,
                      num_objects: int = len(OBJECT_WORDS)) -> dict:
    """Write a synthetic corpus to ``out_dir`` (built under a temporary name, renamed at the end).

    num_objects: use the first ``num_objects`` of ``OBJECT_WORDS``. Fewer, more often seen
    objects are learnt in fewer steps (the CPU demo uses 12: a from-scratch model starts to
    match words to regions after about 1,000 steps there, and not within 2,500 with all 60).

    class_probs: store class distributions (default: when num_images <= 20,000, as they take
    ~3 KB per region). Returns a summary dict (also written to ``corpus.json``).
    """
    out_dir = Path(out_dir)
    if out_dir.exists() and not overwrite:
        raise FileExistsError(f"{out_dir} already exists; remove it or pass --overwrite")
    default_val, default_test = default_split_sizes(num_images)
    val_images = default_val if val_images is None else val_images
    test_images = default_test if test_images is None else test_images
    if num_images - val_images - test_images < 2:
        raise ValueError(f"{num_images} images leave fewer than 2 for training after {val_images} val and "
                         f"{test_images} test images; ask for more images")
    if not 5 <= num_objects <= len(OBJECT_WORDS):
        raise ValueError(f"num_objects is {num_objects}; choose between 5 (an image holds up to 5 objects) "
                         f"and {len(OBJECT_WORDS)}")
    class_probs = num_images <= 20000 if class_probs is None else class_probs
    rng = np.random.Generator(np.random.PCG64([seed, 0]))
    prototypes = _Prototypes(rng, SYNTH_FEATURE_SIZE, num_objects)
    tmp = Path(f"{out_dir}.tmp-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    entries = []
    try:
        with FeatureStoreWriter(tmp / "features", created_by=f"interbert data synth --images {num_images} "
                                f"--seed {seed}", strict=True) as writer:
            for i in tqdm(range(num_images), desc="synth", unit="image", disable=not progress):
                image_rng = np.random.Generator(np.random.PCG64([seed, 1, i]))
                image_id = f"synth-{i:07d}"
                record, objects = synth_image(image_id, image_rng, prototypes, class_probs)
                writer.add(record, source=f"synthetic image {i}")
                split = ("test" if i >= num_images - test_images
                         else "val" if i >= num_images - test_images - val_images else "train")
                for caption in synth_captions(objects, captions_per_image, image_rng):
                    entries.append({"image_id": image_id, "caption": caption, "split": split, "source": "synth"})
        write_manifest(tmp / "captions.jsonl", entries)
        summary = {"images": num_images, "captions": len(entries), "seed": seed,
                   "splits": {s: sum(e["split"] == s for e in entries) for s in ("train", "val", "test")},
                   "class_probs": class_probs, "objects": OBJECT_WORDS[:num_objects], "colours": COLOUR_WORDS,
                   "object_labels": {w: i + 1 for i, w in enumerate(OBJECT_WORDS[:num_objects])}}
        (tmp / "corpus.json").write_text(json.dumps(summary, indent=1))
        if out_dir.exists():
            if not overwrite:  # it appeared while this run was writing: never replaced without the flag
                raise FileExistsError(f"{out_dir} appeared while this run was writing it (another process?); it "
                                      "was left as it is: choose another --out or pass --overwrite")
            shutil.rmtree(out_dir)
        os.replace(tmp, out_dir)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return summary
