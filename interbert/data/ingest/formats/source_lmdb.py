"""Other projects' LMDB environments as conversion input: keys, batches of keys, values, fields.

``source_env`` opens a source read-only without a lock file, once per process (and again in a
forked worker), as a directory (``data.mdb`` inside: ViLBERT, UNITER) or a single file (tensorpack's
``LMDBSerializer`` writes ``NAME.lmdb`` beside ``NAME.lmdb-lock``). ``listed_keys`` reads the
record that lists the keys (ViLBERT ``keys``, tensorpack/UNITER ``__keys__``); ``convert_lmdb`` runs
the shared pipeline over batches of those keys, which each worker reads and decodes itself
(``ParseKeys``).
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Callable

import lmdb

from interbert.data.ingest.conversion import ConversionOptions, ConversionResult, each_record, run_conversion
from interbert.data.ingest.detections import ConversionError

KEYS_PER_UNIT = 16
_ENVIRONMENTS: dict = {}  # realpath -> (pid that opened it, environment)


def source_env(path: str) -> lmdb.Environment:
    """This process's read-only handle on the source LMDB at ``path``."""
    key, pid = os.path.realpath(path), os.getpid()
    entry = _ENVIRONMENTS.get(key)
    if entry is not None and entry[0] == pid:
        return entry[1]
    if entry is not None:  # inherited through fork; without a lock file closing only unmaps this copy
        entry[1].close()
    if not os.path.exists(path):
        raise ConversionError(f"{path}: no such LMDB (give the environment's directory, or the .lmdb file "
                              "tensorpack writes)")
    try:
        env = lmdb.open(path, subdir=os.path.isdir(path), readonly=True, lock=False, readahead=False,
                        meminit=False, max_readers=2048)
    except lmdb.Error as error:
        raise ConversionError(f"{path}: not a readable LMDB environment ({error})") from None
    _ENVIRONMENTS[key] = (pid, env)
    return env


def key_place(path: str, key: bytes) -> str:
    """How errors name a record: ``PATH key 'KEY'``."""
    return f"{path} key {key.decode('utf-8', 'replace')!r}"


def key_text(key: bytes, where: str) -> str:
    """A key as text (image ids are utf-8)."""
    try:
        return key.decode("utf-8")
    except UnicodeDecodeError:
        raise ConversionError(f"{where}: the key is not utf-8 text, so it cannot be an image id") from None


def listed_keys(path: str, listing_key: bytes, decode: Callable) -> list:
    """The keys (bytes) the record ``listing_key`` lists, in its order; ``decode(value, where)``
    turns that record into a list. Without the record: every key of the environment but it."""
    with source_env(path).begin() as txn:
        listing = txn.get(listing_key)
        if listing is None:
            return [key for key in txn.cursor().iternext(values=False) if key != listing_key]
    where = key_place(path, listing_key)
    keys = decode(listing, where)
    if not isinstance(keys, (list, tuple)) or not all(isinstance(k, (bytes, str)) for k in keys):
        raise ConversionError(f"{where}: the key listing is not a list of keys; the LMDB is not of this format "
                              "(see --format)")
    return [k.encode("utf-8") if isinstance(k, str) else k for k in keys]


def read_value(path: str, key: bytes) -> bytes:
    """The value of ``key`` in the source at ``path`` (a worker's read)."""
    with source_env(path).begin() as txn:
        value = txn.get(key)
    if value is None:
        raise ConversionError(f"{key_place(path, key)}: listed in the key listing but absent; the LMDB is "
                              "incomplete")
    return value


@dataclass(frozen=True)
class ParseKeys:
    """The picklable parse function of an LMDB converter: a unit is a batch of keys; each value is
    decoded by ``decode(value, where)`` and made a ConvertedImage by ``to_image(decoded, key,
    where)`` (module-level functions or partials of them, so that it pickles into the workers)."""

    path: str
    decode: Callable
    to_image: Callable

    def __call__(self, keys) -> list:
        return each_record(self.image, keys)

    def image(self, key: bytes):
        where = key_place(self.path, key)
        return self.to_image(self.decode(read_value(self.path, key), where), key, where)


def as_number(value, name: str, where: str) -> float:
    """A record's scalar field (text as csv rows hold it, a number or a numpy scalar) as a float."""
    try:
        return float(value.decode() if isinstance(value, bytes) else value)
    except (TypeError, ValueError, AttributeError):
        raise ConversionError(f"{where}: field {name} is {value!r:.60}, not a number") from None


def as_count(value, name: str, where: str) -> int:
    """A record's count field (``num_boxes``) as a non-negative int."""
    number = as_number(value, name, where)
    if not number.is_integer() or number < 0:
        raise ConversionError(f"{where}: field {name} is {number:g}, not a count")
    return int(number)


def convert_lmdb(path: str, keys: list, parse: Callable, options: ConversionOptions, created_by: str,
                 desc: str) -> ConversionResult:
    """Run the pipeline over ``keys`` of the source at ``path`` in batches of KEYS_PER_UNIT."""
    units = [tuple(keys[i:i + KEYS_PER_UNIT]) for i in range(0, len(keys), KEYS_PER_UNIT)]
    return run_conversion(units, parse, options, created_by, total=len(units), desc=desc, unit_name="batch")
