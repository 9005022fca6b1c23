"""benchmarks/paper_tables.py end to end at toy sizes: the settings (object classes, preset,
regions, warm-up) reach the corpus, the datasets, the schedule and the JSON, with the chance
level of the test split."""
import json
from pathlib import Path

import paper_tables
import pytest

from interbert.data.ingest.synth import OBJECT_WORDS

REPO = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.slow  # real runs of the entry points or the benchmark scripts

TOY = ["--seeds", "1", "--images", "16", "--test-images", "4", "--pretrain-steps", "2", "--pretrain-batch", "4",
       "--finetune-steps", "2", "--finetune-batch", "2", "--pool-size", "2", "--refresh-every", "1"]


def test_the_tables_come_from_the_real_entry_points_with_the_settings(tmp_path, capsys):
    out, work = tmp_path / "t.json", tmp_path / "work"
    assert paper_tables.main(TOY + ["--objects", "6", "--max-regions", "5", "--preset", "tiny",
                                    "--warmup-fraction", "0.5", "--work-dir", str(work), "--json", str(out)]) == 0

    # Each pretraining ran interbert/pretrain.py with its tasks; every run used 5 regions.
    seed = work / "seed-0"
    for row, tasks in (("MLM-MOM-ITM", ["mlm", "mom", "itm"]), ("MSM-MRM-ITM", ["msm", "mrm", "itm"])):
        run_config = json.loads((seed / row / "pretrain" / "run_config.json").read_text())
        assert run_config["tasks"] == tasks and run_config["arguments"]["max_regions"] == 5
        assert (seed / row / "pretrain" / "model" / "model.safetensors").is_file()
        assert "t2i_r@1" in json.loads((seed / row / "zero-shot" / "results.json").read_text())
    for row in ("wo-pretraining", "MLM-MOM-ITM", "MSM-MRM-ITM"):
        finetune = json.loads((seed / row / "fine-tuned" / "run_config.json").read_text())
        assert finetune["settings"]["max_regions"] == 5 and finetune["max_steps"] == 2
    schedule = json.loads((seed / "MSM-MRM-ITM" / "pretrain" / "ds_config.json").read_text())["scheduler"]["params"]
    assert schedule["warmup_num_steps"] == 1 and schedule["warmup_type"] == "linear"

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
    assert report["chance"] == {"images": 4, "captions": 20, "t2i_r@1": 0.25, "t2i_r@5": 1.0, "t2i_r@10": 1.0}
    assert report["corpora"][0]["test_images"] == 4 and report["corpora"][0]["splits"]["test"] == 20
    assert set(report["per_seed"][0]) == {"w/o pretraining / fine-tuned", "MLM+MOM+ITM / zero-shot",
                                          "MLM+MOM+ITM / fine-tuned", "MSM+MRM+ITM / zero-shot",
                                          "MSM+MRM+ITM / fine-tuned"}
    for cell in report["per_seed"][0].values():
        assert set(cell) == set(paper_tables.RECALLS) and all(0 <= v <= 100 for v in cell.values())
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
    params = paper_tables.ds_config(64, 1e-3, 12, 1 / 6)["scheduler"]["params"]
    assert params == {"warmup_min_lr": 0.0, "warmup_max_lr": 1e-3, "warmup_type": "linear",
                      "warmup_num_steps": 2, "total_num_steps": 12}
    assert paper_tables.warmup_steps(3500, 1 / 6) == 583
