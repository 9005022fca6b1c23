"""`interbert evaluate retrieval` on a small saved model and corpus: exact precision gives the
metrics of naive per-pair scoring through `model.itm_score`; bf16 runs and is recorded."""
from __future__ import annotations

import json

import pytest
import torch

from interbert.cli import main
from interbert.config import InterBertConfig
from interbert.data.retrieval.corpus import build_retrieval_corpus
from interbert.data.text.tokenization import default_vocab_file
from interbert.evaluation.full_retrieval import evaluate_full_retrieval
from interbert.evaluation.metrics import retrieval_metrics
from interbert.modeling import InterBertForPretraining
from interbert.modeling.pretraining import INPUT_KEYS

IMAGES = 8  # of the synthetic corpus's train split: 8 images x 40 captions


@pytest.fixture(scope="module")
def saved_model(tmp_path_factory):
    torch.manual_seed(0)
    directory = tmp_path_factory.mktemp("evaluate") / "model"
    InterBertForPretraining(InterBertConfig.from_preset("tiny")).save_pretrained(directory)
    return directory


def evaluate(saved_model, corpus, json_path, *extra):
    return main(["evaluate", "retrieval", "--model", str(saved_model), "--features", str(corpus / "features"),
                 "--captions", str(corpus / "captions.jsonl"), "--split", "train", "--images", str(IMAGES),
                 "--json", str(json_path), "--vocab", default_vocab_file(), *extra])


@torch.no_grad()
def naive_scores(model, corpus) -> torch.Tensor:
    """C×I match probabilities, one padded pair at a time through `itm_score`."""
    model.eval()
    num_captions, num_images = len(corpus), len(corpus.image_ids)
    scores = torch.empty(num_captions, num_images)
    for caption in range(num_captions):
        batch = corpus.pair_batch([caption] * num_images, list(range(num_images)))
        scores[caption] = model.itm_score(**{key: batch[key] for key in INPUT_KEYS}).float()
    return scores


def test_exact_metrics_equal_naive_per_pair_scoring(saved_model, corpus, tmp_path, capsys):
    assert evaluate(saved_model, corpus, tmp_path / "exact.json") == 0
    written = json.loads((tmp_path / "exact.json").read_text())
    printed = capsys.readouterr()
    assert written["precision"] == "exact" and "precision exact" in printed.out
    assert "scoring pairs" in printed.err  # a progress bar, not minutes of silence

    retrieval_corpus = build_retrieval_corpus(str(corpus / "features"), [str(corpus / "captions.jsonl")],
                                              None, "train", IMAGES)
    scores = naive_scores(InterBertForPretraining.from_pretrained(saved_model), retrieval_corpus)
    caption_image = torch.as_tensor(retrieval_corpus.caption_to_image, dtype=torch.long)
    expected = retrieval_metrics(scores, caption_image)
    assert written["images"] == IMAGES and written["captions"] == len(retrieval_corpus)
    assert written["metrics"] == pytest.approx(expected, abs=1e-6)


def test_bf16_precision_runs_and_is_recorded(saved_model, corpus, tmp_path, capsys):
    assert evaluate(saved_model, corpus, tmp_path / "bf16.json", "--precision", "bf16") == 0
    out = capsys.readouterr().out
    assert "precision bf16" in out and "text->image" in out
    written = json.loads((tmp_path / "bf16.json").read_text())
    assert written["precision"] == "bf16"
    exact_keys = {f"{d}_{m}" for d in ("t2i", "i2t") for m in ("r@1", "r@5", "r@10", "median_rank", "mean_rank")}
    assert set(written["metrics"]) == exact_keys | {"rsum"}
    # The command scored with the bf16 copy: its figures are those of the in-process bf16 evaluation,
    # whose scores differ from the exact ones.
    retrieval_corpus = build_retrieval_corpus(str(corpus / "features"), [str(corpus / "captions.jsonl")],
                                              None, "train", IMAGES)
    model = InterBertForPretraining.from_pretrained(saved_model).eval()
    bf16 = evaluate_full_retrieval(model, retrieval_corpus, precision="bf16")
    exact = evaluate_full_retrieval(model, retrieval_corpus)
    assert not torch.equal(bf16.scores, exact.scores)
    assert written["metrics"] == pytest.approx(bf16.full.metrics, abs=1e-9)
    assert set(written["chance"]) >= {"t2i_r@1", "i2t_r@1"}
