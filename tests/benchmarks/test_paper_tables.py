"""benchmarks/paper_tables.py end to end at toy sizes: the settings (object classes, preset,
regions, warm-up) reach the corpus, the datasets, the schedule and the JSON, with the chance
level of the test split."""
import json
import sys
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO / "benchmarks"))

import paper_tables  # noqa: E402
from interbert.data.synth import OBJECT_WORDS  # noqa: E402

TOY = ["--seeds", "1", "--images", "16", "--test-images", "4", "--pretrain-steps", "2", "--pretrain-batch", "4",
       "--finetune-steps", "2", "--finetune-batch", "2", "--pool-size", "2", "--refresh-every", "1"]


def _recording(cls, seen):
    class Recording(cls):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            seen.setdefault(cls.__name__, []).append(self.max_regions)
    return Recording


def test_settings_reach_the_corpus_the_datasets_and_the_json(tmp_path, monkeypatch, capsys):
    seen = {}
    for name in ("PretrainingDataset", "Flickr30kTrainSet", "RetrievalCorpus"):
        monkeypatch.setattr(paper_tables, name, _recording(getattr(paper_tables, name), seen))
    out, work = tmp_path / "t.json", tmp_path / "work"
    assert paper_tables.main(TOY + ["--objects", "6", "--max-regions", "5", "--preset", "tiny",
                                    "--warmup-fraction", "0.5", "--work-dir", str(work), "--json", str(out)]) == 0

    # Every dataset of the run (2 pretrainings, 3 fine-tunings, the test split) used 5 regions.
    assert seen == {"RetrievalCorpus": [5], "PretrainingDataset": [5, 5], "Flickr30kTrainSet": [5, 5, 5]}

    # The corpus holds the first 6 object words only, in its summary and in its captions.
    corpus = work / "corpus-0"
    assert json.loads((corpus / "corpus.json").read_text())["objects"] == list(OBJECT_WORDS[:6])
    words = {w.strip(".,").lower() for line in (corpus / "captions.jsonl").read_text().splitlines()
             for w in json.loads(line)["caption"].split()}
    assert words & set(OBJECT_WORDS[:6])
    assert not words & set(OBJECT_WORDS[6:])

    report = json.loads(out.read_text())
    settings = report["settings"]
    assert settings["objects"] == 6 and settings["object_words"] == list(OBJECT_WORDS[:6])
    assert settings["preset"] == "tiny" and settings["max_regions"] == 5
    assert settings["model_config"]["embedding_dropout_prob"] > 0  # the tiny preset, not tiny-demo
    assert settings["warmup_fraction"] == 0.5 and settings["pretrain_warmup_steps"] == 1
    assert report["arguments"]["max_regions"] == 5 and report["arguments"]["objects"] == 6
    assert report["chance"] == {"images": 4, "captions": 20, "t2i_r@1": 0.25, "t2i_r@5": 1.0, "t2i_r@10": 1.0}
    assert report["corpora"][0]["test_images"] == 4 and report["corpora"][0]["splits"]["test"] == 20
    assert set(report["per_seed"][0]) == {"w/o pretraining / fine-tuned", "MLM+MOM+ITM / zero-shot",
                                          "MLM+MOM+ITM / fine-tuned", "MSM+MRM+ITM / zero-shot",
                                          "MSM+MRM+ITM / fine-tuned"}
    printed = capsys.readouterr().out
    assert "6 object classes, preset tiny, 5 regions" in printed
    assert "chance (4 test images, 20 captions): r@1 25.0%" in printed


def test_defaults_are_the_full_run_and_quick_is_a_smoke_run():
    full = paper_tables.parse_args([])
    assert (full.objects, full.preset, full.max_regions) == (12, "tiny-demo", 10)
    assert full.warmup_fraction == pytest.approx(1 / 6)
    assert (full.pretrain_steps, full.pretrain_batch, full.pretrain_lr) == (2000, 64, 1e-3)
    assert (full.images, full.test_images) == (1000, 100)
    quick = paper_tables.parse_args(["--quick", "--pretrain-steps", "7"])
    assert quick.pretrain_steps == 7 and quick.finetune_steps < full.finetune_steps
    assert quick.images < full.images and quick.objects == 12
    with pytest.raises(SystemExit):
        paper_tables.parse_args(["--preset", "no-such-preset"])


def test_warmup_is_a_fraction_of_the_steps_then_linear_decay():
    model = torch.nn.Linear(2, 2)
    optimizer, schedule = paper_tables._optimizer(model, 1.0, 12, 1 / 6)  # warm-up: 2 of 12 steps
    lrs = []
    for _ in range(12):
        lrs.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        schedule.step()
    assert lrs[:3] == pytest.approx([0.5, 1.0, 1.0])
    assert lrs[3:] == pytest.approx([(12 - s) / 10 for s in range(3, 12)])
    assert paper_tables.warmup_steps(3500, 1 / 6) == 583
