"""benchmarks/retrieval_eval.py end to end on a few synthetic images: one row per precision, the
exact row agrees with the released-style loop, the bf16 row counts its rank changes."""
import json
from pathlib import Path

from retrieval_eval import main

REPO = Path(__file__).resolve().parents[2]


def test_retrieval_benchmark_reports_each_precision_against_the_released_loop(tmp_path, capsys):
    out = tmp_path / "r.json"
    assert main(["--images", "4", "--released-images", "6", "--released-batch", "3", "--released-captions", "2",
                 "--max-regions", "8", "--threads", "1", "--json", str(out)]) == 0
    report = json.loads(out.read_text())
    assert set(report["ours"]) == {"exact", "bf16"}
    assert report["ours"]["exact"]["pairs"] == 4 * 20 and report["released"]["pairs"] == 2 * 6
    assert report["max_score_difference"] < 1e-5
    assert report["released_itm_only"]["pairs"] == 2 * 6  # 2 timed captions x 6 images, as the released loop
    assert report["released_itm_only"]["max_score_difference_to_all_heads"] < 1e-6
    assert report["released"]["heads"].startswith("all")
    assert 0 <= report["ours"]["bf16"]["rank_changes"]["t2i_captions"] <= 20
    printed = capsys.readouterr().out
    assert "ours: full evaluation, bf16" in printed and "speed-up" in printed and "ITM head only" in printed


def test_rank_changes_counts_the_captions_and_images_whose_own_match_moved():
    import torch
    from retrieval_eval import rank_changes

    owners = torch.tensor([0, 0, 1, 1])  # 4 captions of 2 images
    reference = torch.tensor([[0.9, 0.1], [0.8, 0.2], [0.3, 0.7], [0.4, 0.6]])
    assert rank_changes(reference, reference, owners) == {"t2i_captions": 0, "i2t_images": 0}
    moved = reference.clone()
    moved[1] = torch.tensor([0.1, 0.8])  # caption 1 now prefers image 1: its own image drops to rank 2,
    # and image 1 now ranks caption 1 (not its own) first: its best own caption drops to rank 2
    assert rank_changes(moved, reference, owners) == {"t2i_captions": 1, "i2t_images": 1}
    moved[:, 1] = torch.tensor([0.95, 0.85, 0.2, 0.1])  # image 1 now ranks captions 0 and 1 above its own
    assert rank_changes(moved, reference, owners)["i2t_images"] == 1


def test_the_released_forward_with_all_heads_scores_as_the_itm_head_alone():
    import torch
    from retrieval_eval import released_forward

    from interbert.config import InterBertConfig
    from interbert.modeling import InterBertForPretraining

    torch.manual_seed(0)
    model = InterBertForPretraining(InterBertConfig.from_preset("tiny")).eval()
    calls = {"msm": 0, "mrm": 0}
    model.msm_head.register_forward_hook(lambda *_: calls.__setitem__("msm", calls["msm"] + 1))
    model.mrm_head.register_forward_hook(lambda *_: calls.__setitem__("mrm", calls["mrm"] + 1))
    config = model.config
    batch = {"input_ids": torch.randint(1, 1000, (3, 7)), "token_type_ids": torch.zeros(3, 7, dtype=torch.long),
             "text_mask": torch.ones(3, 7, dtype=torch.bool),
             "region_features": torch.rand(3, 5, config.region_feature_size),
             "region_locations": torch.rand(3, 5, 5), "region_mask": torch.ones(3, 5, dtype=torch.bool)}
    with torch.no_grad():
        everything = released_forward(model, batch, "all")
        assert calls == {"msm": 1, "mrm": 1}  # the heads the release computes and throws away
        itm_only = released_forward(model, batch, "itm")
        assert calls == {"msm": 1, "mrm": 1}
    assert torch.allclose(everything, itm_only, atol=1e-6)


TOY = ["--images", "3", "--released-images", "4", "--released-batch", "2", "--released-captions", "1",
       "--max-regions", "6", "--threads", "1"]


def test_device_cpu_runs_in_fp32_and_says_so(tmp_path, capsys):
    out = tmp_path / "r.json"
    assert main([*TOY, "--device", "cpu", "--json", str(out)]) == 0
    report = json.loads(out.read_text())
    assert (report["device"], report["precision"], report["autocast"]) == ("cpu", "fp32", "fp32")
    assert report["device_name"].startswith("cpu")
    printed = capsys.readouterr().out
    assert "device: cpu" in printed and "precision: fp32" in printed and "pairs/s" in printed


def test_under_autocast_both_loops_run_in_it_and_the_rows_say_so(tmp_path, capsys):
    # the GPU's code path (torch.autocast around both loops), exercised on the CPU's bf16 autocast
    out = tmp_path / "r.json"
    assert main([*TOY, "--device", "cpu", "--autocast", "bf16", "--json", str(out)]) == 0
    report = json.loads(out.read_text())
    assert report["precision"] == "autocast bf16" and set(report["ours"]) == {"exact"}
    assert report["ours"]["exact"]["pairs"] == 3 * 15 and report["ours"]["exact"]["pairs_per_second"] > 0
    assert report["max_score_difference"] < 0.05  # bf16 against bf16, not exact
    assert "ours: full evaluation, exact, autocast bf16" in capsys.readouterr().out


def test_auto_is_fp32_on_a_cpu_and_a_missing_gpu_is_refused_in_one_line(capsys):
    import pytest
    import torch
    from retrieval_eval import resolve_autocast

    assert resolve_autocast("auto", torch.device("cpu")) == "fp32"
    assert resolve_autocast("fp16", torch.device("cpu")) == "fp16"
    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    with pytest.raises(SystemExit) as exit_:
        main([*TOY, "--device", "cuda"])
    assert exit_.value.code == 2
    assert "--device cuda: PyTorch sees no CUDA device here; use --device cpu" in capsys.readouterr().err
