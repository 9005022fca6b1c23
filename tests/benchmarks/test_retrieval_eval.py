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
    assert report["ours"]["exact"]["rank_changes"] == {"t2i_captions": 0, "i2t_images": 0}
    assert 0 <= report["ours"]["bf16"]["rank_changes"]["t2i_captions"] <= 20
    printed = capsys.readouterr().out
    assert "ours: full evaluation, bf16" in printed and "speed-up" in printed
