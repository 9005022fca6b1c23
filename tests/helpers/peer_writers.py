"""Small source stores laid out byte for byte as other projects' own writers lay them out, and
the poisoned payload and error check the peer-converter tests share.

Each writer names the peer file whose layout it follows (repository and path); none of their
code is copied: the layouts are rebuilt here with plain csv, pickle, json, msgpack (with
msgpack-numpy's ``encode`` hook), lmdb and numpy.
"""
from __future__ import annotations

import base64
import csv
import io
import json
import os
import pickle
import re
import zipfile
from collections import OrderedDict
from dataclasses import dataclass

import lmdb
import msgpack
import msgpack_numpy
import numpy as np

NUM_CLASSES = 1601  # Visual Genome detector: background + 1600 classes
MAP_SIZE = 1 << 30


@dataclass
class Detections:
    """One image's detector output as the extractors hold it (float32, boxes in pixels)."""

    image_id: str
    width: int
    height: int
    boxes: np.ndarray
    features: np.ndarray
    cls_prob: np.ndarray  # N×1601, column 0 the background

    @property
    def labels(self) -> np.ndarray:
        """The store's labels: argmax over the classes without the background, +1."""
        return self.cls_prob[:, 1:].argmax(axis=1) + 1

    @property
    def confidences(self) -> np.ndarray:
        return self.cls_prob[np.arange(len(self.labels)), self.labels]

    @property
    def norm_bb(self) -> np.ndarray:
        """x1, y1, x2, y2, w, h divided by the image size (UNITER's ``norm_bb``, VinVL's positions)."""
        scale = np.array([self.width, self.height] * 3, np.float32)
        xyxy = self.boxes
        return np.concatenate([xyxy, xyxy[:, 2:] - xyxy[:, :2]], axis=1) / scale


def detections(image_id: str, num_regions: int = 5, seed: int = 0, feature_size: int = 2048) -> Detections:
    """Random detector output whose labels are unambiguous even after a float16 cast."""
    rng = np.random.default_rng(seed)
    width, height = 640, 480
    xy = rng.uniform(0, 300, (num_regions, 2))
    wh = rng.uniform(20, 160, (num_regions, 2))
    boxes = np.concatenate([xy, xy + wh], axis=1).astype(np.float32)
    cls_prob = np.full((num_regions, NUM_CLASSES), 1e-4, np.float32)
    cls_prob[:, 0] = 0.3
    cls_prob[np.arange(num_regions), rng.integers(1, NUM_CLASSES, num_regions)] = rng.uniform(0.35, 0.6, num_regions)
    features = rng.uniform(0, 4, (num_regions, feature_size)).astype(np.float32)
    return Detections(image_id, width, height, boxes, features, cls_prob)


def _b64(array: np.ndarray) -> str:
    return base64.b64encode(np.ascontiguousarray(array)).decode()


def _write_lmdb(path, items, subdir: bool = True) -> None:
    env = lmdb.open(str(path), subdir=subdir, map_size=MAP_SIZE)
    with env.begin(write=True) as txn:
        for key, value in items:
            txn.put(key, value)
    env.close()


def put_value(path, key: str, value: bytes) -> None:
    """Replace one value of a source LMDB (a directory, or tensorpack's single file) to plant a bad record."""
    _write_lmdb(path, [(key.encode(), value)], subdir=os.path.isdir(str(path)))


def write_vilbert_tsv_lmdb(path, images: list, tmp_dir, with_cls_prob: bool = True, python36: bool = False) -> None:
    """ViLBERT's LMDB of bottom-up-attention TSV rows: jiasenlu/vilbert_beta
    script/convert_trainval_lmdb.py (csv.DictReader rows pickled under ``str(image_id).encode()``,
    ``keys`` the pickled id list); the TSV as peteanderson80/bottom-up-attention
    tools/generate_tsv.py writes it (csv.DictWriter, tab-delimited, base64 float32 arrays).
    ``python36``: the rows as Python 3.6/3.7 produce them (OrderedDict, pickle protocol 3)."""
    fieldnames = ["image_id", "image_w", "image_h", "num_boxes", "boxes", "features"]
    fieldnames += ["cls_prob"] if with_cls_prob else []
    tsv = os.path.join(str(tmp_dir), "features.tsv")
    with open(tsv, "w", newline="") as handle:
        writer = csv.DictWriter(handle, delimiter="\t", fieldnames=fieldnames)
        for image in images:
            row = {"image_id": image.image_id, "image_w": image.width, "image_h": image.height,
                   "num_boxes": len(image.boxes), "boxes": _b64(image.boxes), "features": _b64(image.features)}
            if with_cls_prob:
                row["cls_prob"] = _b64(image.cls_prob)
            writer.writerow(row)
    items, id_list = [], []
    with open(tsv) as handle:
        for item in csv.DictReader(handle, delimiter="\t", fieldnames=fieldnames):
            if python36:
                item = OrderedDict(item)
            img_id = str(item["image_id"]).encode()
            id_list.append(img_id)
            items.append((img_id, pickle.dumps(item, protocol=3 if python36 else pickle.DEFAULT_PROTOCOL)))
    items.append((b"keys", pickle.dumps(id_list, protocol=3 if python36 else pickle.DEFAULT_PROTOCOL)))
    _write_lmdb(path, items)


def write_vilbert_numpy_lmdb(path, images: list, tmp_dir, with_cls_prob: bool = False,
                             nonzero_boxes: int = 3) -> None:
    """ViLBERT's LMDB of its own extraction: facebookresearch/vilbert-multi-task
    script/extract_features.py saves each image's dict with np.save (``bbox``, ``num_boxes`` = boxes
    with a nonzero score, ``image_width``/``image_height`` ints, ``cls_prob``, ``features``) and
    script/convert_to_lmdb.py pickles ``image_id, image_h, image_w, num_boxes, boxes, features``
    under ``str(image_id).encode()``, ``keys`` the id list (pickle protocol 3: the Python 3.6 its README
    sets up). ``with_cls_prob`` also copies cls_prob."""
    items, id_list = [], []
    for image in images:
        npy = os.path.join(str(tmp_dir), f"{image.image_id}.npy")
        np.save(npy, {"bbox": image.boxes, "num_boxes": nonzero_boxes, "objects": image.labels - 1,
                      "image_width": image.width, "image_height": image.height, "cls_prob": image.cls_prob,
                      "image_id": image.image_id, "features": image.features})
        reader = np.load(npy, allow_pickle=True)  # our own file, written just above
        item = {"image_id": reader.item().get("image_id")}
        img_id = str(item["image_id"]).encode()
        id_list.append(img_id)
        item["image_h"] = reader.item().get("image_height")
        item["image_w"] = reader.item().get("image_width")
        item["num_boxes"] = reader.item().get("num_boxes")
        item["boxes"] = reader.item().get("bbox")
        item["features"] = reader.item().get("features")
        if with_cls_prob:
            item["cls_prob"] = reader.item().get("cls_prob")
        items.append((img_id, pickle.dumps(item, protocol=3)))
    items.append((b"keys", pickle.dumps(id_list, protocol=3)))
    _write_lmdb(path, items)


def msgpack_numpy_dumps(obj) -> bytes:
    """What ``msgpack_numpy.patch(); msgpack.dumps(obj, use_bin_type=True)`` writes (UNITER,
    tensorpack), without patching msgpack for the whole test process."""
    return msgpack.packb(obj, default=msgpack_numpy.encode, use_bin_type=True)


def uniter_extractor_npz(image: Detections, max_conf: np.ndarray) -> dict:
    """One image's npz as UNITER's extractor writes it: BUTD-UNITER-NLVR2 (the chenrocks/butd-caffe:nlvr2
    docker of ChenRocks/UNITER scripts/extract_imgfeat.sh) tools/generate_npz.py save_to_npz. The
    float64 ``max_conf`` goes through base64 as float64, is reshaped to (N, 1) and cast to float32;
    ``norm_bb`` is x1/w, y1/h, x1/w + bw/w, y1/h + bh/h, bw/w, bh/h in float32; every array is saved
    as float16, in this order."""
    n = len(image.boxes)
    bboxes = image.boxes
    image_w, image_h = float(image.width), float(image.height)
    confidence = np.frombuffer(base64.b64decode(_b64(max_conf.astype(np.float64))), dtype=np.float64
                               ).reshape((n, -1)).astype(np.float32)
    box_width, box_height = bboxes[:, 2] - bboxes[:, 0], bboxes[:, 3] - bboxes[:, 1]
    scaled_width, scaled_height = box_width / image_w, box_height / image_h
    scaled_x, scaled_y = bboxes[:, 0] / image_w, bboxes[:, 1] / image_h
    columns = [scaled_x, scaled_y, scaled_x + scaled_width, scaled_y + scaled_height, scaled_width, scaled_height]
    normalized_bbox = np.concatenate([c[..., np.newaxis] for c in columns], axis=1)
    arrays = {"norm_bb": normalized_bbox.astype(np.float16), "features": image.features.astype(np.float16),
              "conf": confidence.astype(np.float16), "soft_labels": image.cls_prob.astype(np.float16)}
    with io.BytesIO() as npz:  # saved and loaded again, as convert_imgdir.py reads the extractor's files
        np.savez_compressed(npz, **arrays)
        npz.seek(0)
        with np.load(npz) as loaded:
            return {key: loaded[key] for key in loaded.files}


def uniter_nbb(conf: np.ndarray, conf_th: float, max_bb: int, min_bb: int) -> int:
    """ChenRocks/UNITER scripts/convert_imgdir.py _compute_nbb, on the npz's (N, 1) float16 conf."""
    return int(min(max_bb, max(min_bb, (conf > conf_th).sum())))


def savez_compressed_numpy1(arrays: dict) -> bytes:
    """The bytes of ``np.savez_compressed(writer, **arrays, allow_pickle=True)`` under numpy 1.x, as
    convert_imgdir.py ran it: savez had no ``allow_pickle`` parameter then and stored the keyword as
    one more member, a 0-d bool array (numpy >= 2.1 takes it as the parameter, so the members are
    written here as numpy's own savez writes them)."""
    with io.BytesIO() as writer:
        with zipfile.ZipFile(writer, mode="w", compression=zipfile.ZIP_DEFLATED, allowZip64=True) as archive:
            for name, value in {**arrays, "allow_pickle": True}.items():
                with archive.open(name + ".npy", "w", force_zip64=True) as member:
                    np.lib.format.write_array(member, np.asanyarray(value), allow_pickle=True)
        return writer.getvalue()


def write_uniter_lmdb(img_dir, images: list, max_confs: list, conf_th: float = 0.2, max_bb: int = 100,
                      min_bb: int = 2, compress: bool = False, prefix: str = "nlvr2_",
                      flat_conf: bool = False) -> str:
    """UNITER's image LMDB from the extractor's npz files (``uniter_extractor_npz``, one float64
    ``max_conf`` per box): ChenRocks/UNITER scripts/convert_imgdir.py load_npz (float32 cast to
    float16, 2-d arrays cut ``[:nbb, :]``, 1-d ``[:nbb]``), then msgpack + msgpack-numpy, or with
    ``compress`` numpy 1.x's ``np.savez_compressed`` bytes; keys the npz file names, ``__keys__`` their
    JSON list, ``nbb_th*_max*_min*.json`` beside the LMDB directory. ``flat_conf``: ``conf`` 1-d, as a
    hand-made LMDB might hold it. Returns the LMDB directory."""
    db_name = f"feat_th{conf_th}_max{max_bb}_min{min_bb}" + ("_compressed" if compress else "")
    os.makedirs(str(img_dir), exist_ok=True)
    items, name2nbb = [], {}
    for image, max_conf in zip(images, max_confs):
        img_dump = uniter_extractor_npz(image, max_conf)
        if flat_conf:
            img_dump["conf"] = img_dump["conf"].reshape(-1)
        nbb = uniter_nbb(img_dump["conf"], conf_th, max_bb, min_bb)
        dump = {}
        for key, arr in img_dump.items():
            if arr.dtype == np.float32:
                arr = arr.astype(np.float16)
            dump[key] = arr[:nbb, :] if arr.ndim == 2 else arr[:nbb]
        value = savez_compressed_numpy1(dump) if compress else msgpack_numpy_dumps(dump)
        fname = f"{prefix}{image.image_id}.npz"
        items.append((fname.encode("utf-8"), value))
        name2nbb[fname] = nbb
    items.append((b"__keys__", json.dumps(list(name2nbb.keys())).encode("utf-8")))
    lmdb_dir = os.path.join(str(img_dir), db_name)
    _write_lmdb(lmdb_dir, items)
    with open(os.path.join(str(img_dir), f"nbb_th{conf_th}_max{max_bb}_min{min_bb}.json"), "w") as f:
        json.dump(name2nbb, f)
    return lmdb_dir


def conceptual_caption_datapoint(image: Detections, caption: str) -> list:
    """jiasenlu/vilbert_beta script/conceptual_caption_preprocess_sequential_train.py: arrays decoded
    from the bottom-up TSV with np.frombuffer, the other fields the csv row's text."""
    n = len(image.boxes)
    boxes = np.frombuffer(base64.b64decode(_b64(image.boxes)), dtype=np.float32).reshape(n, 4)
    features = np.frombuffer(base64.b64decode(_b64(image.features)), dtype=np.float32).reshape(n, 2048)
    cls_prob = np.frombuffer(base64.b64decode(_b64(image.cls_prob)), dtype=np.float32).reshape(n, 1601)
    return [features, cls_prob, boxes, str(n), str(image.height), str(image.width), image.image_id, caption]


def write_tensorpack_lmdb(path, datapoints: list) -> None:
    """tensorpack/tensorpack tensorpack/dataflow/serialize.py LMDBSerializer.save (a single-file LMDB,
    keys ``'{:08}'.format(idx)``, ``__keys__`` their list) with tensorpack/utils/serialize.py's
    ``dumps`` (msgpack, use_bin_type=True, msgpack-numpy hooks)."""
    db = lmdb.open(str(path), subdir=False, map_size=MAP_SIZE, readonly=False, meminit=False, map_async=True)
    txn = db.begin(write=True)
    idx = -1
    for idx, dp in enumerate(datapoints):
        txn.put(f"{idx:08}".encode("ascii"), msgpack_numpy_dumps(dp))
    txn.commit()
    keys = [f"{k:08}".encode("ascii") for k in range(idx + 1)]
    with db.begin(write=True) as txn:
        txn.put(b"__keys__", msgpack_numpy_dumps(keys))
    db.sync()
    db.close()


def tsv_writer(rows: list, tsv_file) -> None:
    """microsoft/scene_graph_benchmark maskrcnn_benchmark/structures/tsv_file_ops.py tsv_writer: rows
    joined by tabs, and ``splitext(tsv)[0] + '.lineidx'`` with each row's offset."""
    lineidx = os.path.splitext(str(tsv_file))[0] + ".lineidx"
    idx = 0
    with open(str(tsv_file), "w") as fp, open(lineidx, "w") as fpidx:
        for value in rows:
            v = "{}\n".format("\t".join(map(str, value)))
            fp.write(v)
            fpidx.write(str(idx) + "\n")
            idx = idx + len(v)


def vinvl_feature_row(image: Detections, json_layout: bool = False) -> list:
    """A VinVL feature row as microsoft/Oscar oscar/datasets/oscar_tsv.py reads it (``image_id,
    num_boxes, base64`` of N×2054 float32: features then the 6 normalised positions), or, with
    ``json_layout``, as oscar/run_captioning.py reads it (``image_id, {"num_boxes", "features"}``)."""
    values = np.concatenate([image.features, image.norm_bb], axis=1).astype(np.float32)
    if json_layout:
        return [image.image_id, json.dumps({"num_boxes": len(values), "features": _b64(values)})]
    return [image.image_id, len(values), _b64(values)]


def vinvl_labelmap(path, names: list) -> None:
    """A VinVL labelmap JSON: ``label_to_idx`` 1-based (read by microsoft/scene_graph_benchmark
    maskrcnn_benchmark/utils/miscellaneous.py load_labelmap_file)."""
    with open(str(path), "w") as f:
        json.dump({"label_to_idx": {name: i + 1 for i, name in enumerate(names)},
                   "idx_to_label": {str(i + 1): name for i, name in enumerate(names)}}, f)


def vinvl_prediction_row(image: Detections, names: list, with_size: bool = True) -> list:
    """A predictions row as microsoft/Oscar oscar/datasets/oscar_tsv.py reads it (objects with rect,
    class, conf; image_h, image_w); without the size, the bare object list of Oscar's *.label.tsv."""
    objects = [{"rect": box.tolist(), "class": names[label - 1], "conf": float(conf)}
               for box, label, conf in zip(image.boxes, image.labels, image.confidences)]
    if not with_size:
        return [image.image_id, json.dumps(objects)]
    return [image.image_id, json.dumps({"objects": objects, "image_h": image.height, "image_w": image.width})]


def write_milvlg_npz(folder, image: Detections, info_extra: dict | None = None) -> str:
    """MILVLG/bottom-up-attention.pytorch utils/extract_utils.py save_roi_features:
    np.savez_compressed(x, bbox, num_bbox, image_h, image_w, info) with ``info`` a dict (pickled as a
    0-d object array) of 0-based ``objects_id``/``attrs_id`` and their confidences."""
    n = len(image.boxes)
    scores = image.cls_prob
    info = {"image_id": image.image_id, "image_h": image.height, "image_w": image.width, "num_boxes": n,
            "objects_id": np.argmax(scores[:, 1:], axis=1), "objects_conf": np.max(scores[:, 1:], axis=1),
            "attrs_id": np.zeros(n, np.int64), "attrs_conf": np.full(n, 0.5, np.float32), **(info_extra or {})}
    output_file = os.path.join(str(folder), image.image_id)
    np.savez_compressed(output_file, x=image.features, bbox=image.boxes, num_bbox=n, image_h=image.height,
                        image_w=image.width, info=info)
    return output_file + ".npz"


class Poison:
    """Unpickling this runs a shell command that creates ``marker``."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


def assert_one_error_line(err: str) -> None:
    """stderr holds one ``error: ...`` line (after any progress bar) and no traceback."""
    assert err.count("error: ") == 1 and re.search(r"error: [^\n]*\n$", err) and "Traceback" not in err


def assert_stored(back, image: Detections, labels: bool = True, class_probs: bool = True) -> None:
    """The store's record ``back`` holds ``image``: features up to float16, boxes, size, and (when
    asked) labels in the background-at-0 space, confidences and the class distribution."""
    np.testing.assert_array_equal(back.features, image.features.astype(np.float16))
    np.testing.assert_array_equal(back.boxes, image.boxes)
    assert (back.width, back.height) == (image.width, image.height)
    if labels:
        np.testing.assert_array_equal(back.labels, image.labels)
        np.testing.assert_array_equal(back.confidences, image.confidences)
    if labels and class_probs:
        np.testing.assert_array_equal(back.class_probs, image.cls_prob.astype(np.float16))
    elif labels:
        assert back.class_probs is None
