"""benchmarks/retrieval_eval.py end to end on a few synthetic images: one row per precision, the
exact row agrees with the released-style loop, the bf16 row counts its rank changes."""
import json
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO / "benchmarks"))

from retrieval_eval import main  # noqa: E402


def test_retrieval_benchmark_reports_each_precision_against_the_released_loop(tmp_path, capsys):
    out = tmp_path / "r.json"
    assert main(["--images", "4", "--released-images", "6", "--released-batch", "3", "--released-captions", "2",
                 "--max-regions", "8", "--threads", "1", "--json", str(out)]) == 0
    report = json.loads(out.read_text())
    assert set(report["ours"]) == {"exact", "bf16"}
    assert report["ours"]["exact"]["pairs"] == 4 * 20 and report["released"]["pairs"] == 2 * 6
    assert report["max_score_difference"] < 1e-5
    assert report["released_itm_only"]["pairs"] == report["released"]["pairs"]
    assert report["released"]["heads"].startswith("all")
    assert report["ours"]["exact"]["rank_changes"] == {"t2i_captions": 0, "i2t_images": 0}
    assert 0 <= report["ours"]["bf16"]["rank_changes"]["t2i_captions"] <= 20
    printed = capsys.readouterr().out
    assert "ours: full evaluation, bf16" in printed and "speed-up" in printed and "ITM head only" in printed


def test_the_released_forward_with_all_heads_scores_as_the_itm_head_alone():
    import torch
    from retrieval_eval import released_forward
    from interbert.config import InterBertConfig
    from interbert.modeling import InterBertForPretraining

    torch.manual_seed(0)
    model = InterBertForPretraining(InterBertConfig.from_preset("tiny")).eval()
    config = model.config
    batch = {"input_ids": torch.randint(1, 1000, (3, 7)), "token_type_ids": torch.zeros(3, 7, dtype=torch.long),
             "text_mask": torch.ones(3, 7, dtype=torch.bool),
             "region_features": torch.rand(3, 5, config.region_feature_size),
             "region_locations": torch.rand(3, 5, 5), "region_mask": torch.ones(3, 5, dtype=torch.bool)}
    with torch.no_grad():
        assert torch.allclose(released_forward(model, batch, "all"), released_forward(model, batch, "itm"), atol=1e-6)
