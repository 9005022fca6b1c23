"""benchmarks/data_scale.py and benchmarks/dataloader.py at toy sizes: they run the real
converter, store and loader, and their figures describe what was built."""
import json
from pathlib import Path

import data_scale
import dataloader
import pytest

REPO = Path(__file__).resolve().parents[2]


def test_data_scale_converts_reads_and_projects(tmp_path, capsys):
    out = tmp_path / "scale.json"
    (tmp_path / "ram").mkdir()
    assert data_scale.main(["--images", "6", "--images-100", "3", "--read-sizes", "10", "30", "--reads", "40",
                            "--workdir", str(tmp_path / "work"), "--memory-dir", str(tmp_path / "ram"),
                            "--json", str(out)]) == 0
    figures = json.loads(out.read_text())
    for regions, images in (("36", 6), ("100", 3)):
        part = figures["by_regions"][regions]
        assert set(part["conversions"]) == {"disk", "memory"} and part["floor_images_per_s"] > 0
        for runs in part["conversions"].values():
            assert [run["workers"] for run in runs] == [1, 2]
            assert all(run["images"] == images for run in runs)
            feature_bytes = int(regions) * 2048 * 2  # float16 in the store
            assert all(feature_bytes < run["bytes_per_image"] < 2 * feature_bytes for run in runs)
        projection = part["projection"]
        assert projection["images"] == sum(data_scale.CORPUS_IMAGES.values())
        # the store holds at least the float16 features of every image, and not twice them
        features_tib = projection["images"] * feature_bytes / 2 ** 40
        assert features_tib < projection["disk_tib"] < 2 * features_tib
        fastest = max(run["images_per_s"] for run in part["conversions"]["disk"])
        assert projection["hours"] == pytest.approx(projection["images"] / fastest / 3600)
    assert [row["records"] for row in figures["read_cost"]] == [10, 30]
    assert all(row["get_us"] > 0 and row["bytes_us"] > 0 and row["first_us"] > 0 for row in figures["read_cost"])
    printed = capsys.readouterr().out
    assert "of the floor" in printed and "projection for" in printed


def test_dataloader_benchmark_prints_the_floor_beside_each_worker_count(tmp_path, capsys):
    out = tmp_path / "loader.json"
    dataloader.main(["--images", "40", "--batches", "2", "--batch-size", "8", "--workers", "0", "1",
                     "--json", str(out)])
    figures = json.loads(out.read_text())
    assert figures["images"] == 40 and figures["regions_per_image"] == 36
    assert set(figures["samples_per_s"]) == {"0", "1"} and figures["read_floor_samples_per_s"] > 0
    assert set(figures["feature_handoff_ms"]) == {"private", "shared"}
    # the training side's data time per batch and each rate against the in-process one, in the same run
    data_ms = figures["data_ms_per_batch"]
    assert set(data_ms) == {"0", "1"} and all(ms > 0 for ms in data_ms.values())
    assert figures["rate_vs_in_process"]["0"] == 1.0 and figures["rate_vs_in_process"]["1"] > 0
    assert figures["simulated_step_ms"] > 0
    printed = capsys.readouterr().out
    assert "bare read floor" in printed and "| 1 |" in printed and "of the in-process rate" in printed
