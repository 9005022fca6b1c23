"""Helpers for the data tests: records, small stores, planted bad records, manifests, detector
TSV rows."""
from __future__ import annotations

import base64
import csv
import json

import lmdb
import numpy as np

from interbert.data.store.record_format import RegionRecord
from interbert.data.store.writer import FeatureStoreWriter

FEATURE_SIZE = 2048


def make_record(image_id: str, num_regions: int = 5, seed: int = 0, class_probs: bool = False,
                feature_size: int = FEATURE_SIZE) -> RegionRecord:
    rng = np.random.default_rng(seed)
    width, height = 640.0, 480.0
    xy = rng.uniform(0, 300, (num_regions, 2))
    wh = rng.uniform(20, 200, (num_regions, 2))
    boxes = np.concatenate([xy, np.minimum(xy + wh, [width, height])], axis=1).astype(np.float32)
    probs = None
    labels = rng.integers(1, 1601, num_regions).astype(np.int32)
    if class_probs:  # labels in the background-at-0 space agree with the distribution
        probs = rng.dirichlet(np.ones(1601), num_regions).astype(np.float16).astype(np.float32)
        labels = (probs[:, 1:].argmax(axis=1) + 1).astype(np.int32)
    return RegionRecord(image_id=image_id, width=width, height=height,
                        features=rng.uniform(0, 4, (num_regions, feature_size)).astype(np.float32),
                        boxes=boxes, labels=labels,
                        confidences=rng.uniform(0.1, 1.0, num_regions).astype(np.float32), class_probs=probs)


def write_store(path, records, **kwargs) -> str:
    with FeatureStoreWriter(path, **kwargs) as writer:
        for record in records:
            writer.add(record)
    return str(path)


def put_raw(store_path, key: str, value: bytes) -> None:
    """Write bytes under a key directly, bypassing the writer's checks (to plant bad records)."""
    env = lmdb.open(str(store_path), map_size=1 << 30)
    with env.begin(write=True) as txn:
        txn.put(key.encode(), value)
    env.close()


def write_manifest_lines(path, entries) -> str:
    path.write_text("".join(json.dumps(e) + "\n" for e in entries))
    return str(path)


def write_bottom_up_tsv(path, records) -> None:
    """peteanderson80/bottom-up-attention tools/generate_tsv.py: csv rows (tab-delimited, "\\r\\n")
    of image_id, image_w, image_h, num_boxes and base64 float32 boxes and features."""
    def b64(array) -> str:
        return base64.b64encode(np.ascontiguousarray(array, np.float32)).decode()

    with open(path, "w", newline="") as handle:
        writer = csv.writer(handle, delimiter="\t")
        for r in records:
            writer.writerow([r.image_id, int(r.width), int(r.height), r.num_regions, b64(r.boxes), b64(r.features)])


def _b64(array) -> str:
    return base64.b64encode(np.ascontiguousarray(array).tobytes()).decode()


def tsv_row(record, cls_prob=None, with_detections=False) -> str:
    """One line of a bottom-up-attention TSV for `record` (base64 arrays), optionally with cls_prob
    and the detection columns."""
    fields = [record.image_id, f"{record.width:g}", f"{record.height:g}", str(record.num_regions),
              _b64(record.boxes.astype(np.float32)), _b64(record.features.astype(np.float32))]
    if cls_prob is not None:
        fields.append(_b64(cls_prob.astype(np.float32)))
    if with_detections:
        fields += [_b64(record.labels.astype(np.int64)), _b64(record.confidences.astype(np.float32)),
                   _b64(np.zeros(record.num_regions, np.int64)), _b64(np.ones(record.num_regions, np.float32))]
    return "\t".join(fields) + "\n"
