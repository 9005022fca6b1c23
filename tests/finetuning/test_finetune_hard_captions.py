"""The release's kind of Flickr30K hard negative (--hard-negatives release-captions): a pool of hard
captions per image, precomputed by python -m interbert.finetuning.hard_captions, and fine-tuning on
the 4th pair (hard caption, same image)."""
import json
import shutil

import pytest

from interbert.config import InterBertConfig
from interbert.data.text.tokenization import VOCAB_NAME, default_vocab_file
from interbert.finetuning.flickr30k import Flickr30kTrainSet, HardCaptionPool
from interbert.finetuning.hard_captions import main as hard_captions
from interbert.modeling import InterBertForPretraining


@pytest.fixture
def pool_file(ft_corpus, tmp_path):
    model = tmp_path / "model"
    InterBertForPretraining(InterBertConfig.from_preset("tiny")).save_pretrained(model)
    shutil.copyfile(default_vocab_file(), model / VOCAB_NAME)
    out = tmp_path / "pool.json"
    assert hard_captions(["--model", str(model), "--features", str(ft_corpus / "features"), "--captions",
                          str(ft_corpus / "captions.jsonl"), "--out", str(out), "--pool-size", "3",
                          "--candidates", "20", "--max-regions", "12"]) == 0
    return out


def test_the_pool_holds_other_images_captions_for_every_image(ft_corpus, pool_file):
    pool = HardCaptionPool.load(pool_file)
    dataset = Flickr30kTrainSet(ft_corpus / "features", ft_corpus / "captions.jsonl", default_vocab_file(),
                                max_regions=12, hard_captions=pool)
    assert set(pool.pool) == set(dataset.image_ids)
    for image_id, captions in pool.pool.items():
        assert 1 <= len(captions) <= 3
        assert all(dataset.image_ids[dataset.caption_to_image[c]] != image_id for c in captions)
    sample = dataset[5]
    own = dataset.caption_to_image[5]
    hard_text = sample["texts"][3][0]
    choices = {tuple(dataset.text(c)[0]) for c in pool.pool[dataset.image_ids[own]]}
    assert tuple(hard_text) in choices  # a hard caption of another image ...
    assert (sample["images"][3][0] == sample["images"][0][0]).all()  # ... with the same image
    assert sample["count_hard_mined"] == 1 and sample["count_hard_fallback"] == 0


def test_fine_tuning_with_release_captions_trains_on_the_pool(ft_corpus, pool_file, tmp_path, run_finetune,
                                                             ds_config_writer, train_log):
    config = ds_config_writer(tmp_path / "ds.json", finetune={"max_regions": 12, "ema": {"enabled": False}})
    output = tmp_path / "run"
    assert run_finetune("--task", "flickr30k", "--deepspeed_config", config, "--preset", "tiny",
                        "--features", ft_corpus / "features", "--captions", ft_corpus / "captions.jsonl",
                        "--output-dir", output, "--eval-images", "4", "--max-steps", "2",
                        "--hard-negatives", "release-captions", "--hard-captions", pool_file) == 0
    log = train_log(output)
    assert [r["step"] for r in log] == [1, 2]
    assert all(r["hard_negative_fallback_fraction"] == 0.0 for r in log)
    assert json.loads((output / "run_config.json").read_text())["arguments"]["hard_negatives"] == "release-captions"


def test_release_captions_without_a_pool_is_one_line(ft_corpus, tmp_path, run_finetune, ds_config_writer, capsys):
    config = ds_config_writer(tmp_path / "ds.json", finetune={"max_regions": 12})
    assert run_finetune("--task", "flickr30k", "--deepspeed_config", config, "--preset", "tiny",
                        "--features", ft_corpus / "features", "--captions", ft_corpus / "captions.jsonl",
                        "--output-dir", tmp_path / "run", "--max-steps", "1",
                        "--hard-negatives", "release-captions") == 2
    assert "--hard-negatives release-captions needs --hard-captions FILE" in capsys.readouterr().err
