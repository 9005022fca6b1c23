"""Which vocabulary a command uses: --vocab, else vocab.txt of the first directory flag that has
one, else an error naming the flags (never the test wheel)."""
from __future__ import annotations

import shutil

import pytest

from interbert.data.text.tokenization import VocabularyError, find_vocab


def test_the_flag_wins_and_must_exist(tmp_path, vocab_file):
    assert find_vocab(vocab_file, {"--model": None}) == vocab_file
    with pytest.raises(VocabularyError, match=r"--vocab .*missing\.txt: no such file"):
        find_vocab(str(tmp_path / "missing.txt"), {"--model": None})


def test_the_first_directory_holding_vocab_txt_is_used(tmp_path, vocab_file):
    bert, model = tmp_path / "bert", tmp_path / "model"
    bert.mkdir(), model.mkdir()
    shutil.copyfile(vocab_file, model / "vocab.txt")
    assert find_vocab(None, {"--init-bert": str(bert), "--init-model": str(model)}) == str(model / "vocab.txt")
    shutil.copyfile(vocab_file, bert / "vocab.txt")
    assert find_vocab(None, {"--init-bert": str(bert), "--init-model": str(model)}) == str(bert / "vocab.txt")


def test_none_found_names_the_flags_and_the_directories_that_lack_it(tmp_path):
    with pytest.raises(VocabularyError) as caught:
        find_vocab(None, {"--model": str(tmp_path), "--init-bert": None})
    assert str(caught.value) == (f"no vocabulary: pass --vocab FILE (the bert-base-uncased vocab.txt), or --model DIR "
                                 f"or --init-bert DIR holding vocab.txt; --model {tmp_path} has no vocab.txt")


def test_a_vocabulary_is_built_into_a_tokenizer_once_until_the_file_changes(tmp_path, vocab_file):
    from interbert.data.text.tokenization import load_tokenizer

    copy = tmp_path / "vocab.txt"
    shutil.copyfile(vocab_file, copy)
    first = load_tokenizer(copy)
    assert load_tokenizer(str(copy)) is first  # the run's datasets share one
    assert first("a dog")["input_ids"] == load_tokenizer(vocab_file)("a dog")["input_ids"]
    words = copy.read_text().splitlines()
    copy.write_text("\n".join(words[:1000] + ["zzzunseenword"] + words[1001:]) + "\n")
    changed = load_tokenizer(copy)
    assert changed is not first
    assert changed.convert_tokens_to_ids("zzzunseenword") == 1000
