"""The full retrieval evaluation gives the naive per-pair scores (same ranks), whatever the
blocking; two-stage re-ranking of every candidate gives the full figures."""
from __future__ import annotations

import pytest
import torch

from interbert.data.retrieval.corpus import RetrievalCorpus
from interbert.evaluation.full_retrieval import evaluate_full_retrieval
from interbert.evaluation.metrics import image_to_text_ranks, retrieval_metrics, text_to_image_ranks


@pytest.fixture(scope="module")
def corpus(ft_corpus):
    return RetrievalCorpus(ft_corpus / "features", ft_corpus / "captions.jsonl", split="val", max_regions=12)


@pytest.fixture(scope="module")
def naive_scores(corpus, tiny_model):
    """Every pair through InterBertForPretraining.itm_score, one pair at a time."""
    scores = torch.empty(len(corpus), len(corpus.image_ids))
    with torch.no_grad():
        for c in range(len(corpus)):
            for i in range(len(corpus.image_ids)):
                scores[c, i] = tiny_model.itm_score(**corpus.pair_batch([c], [i]))[0]
    return scores


@pytest.mark.parametrize("pair_batch", [3, 64])
def test_full_evaluation_equals_naive_per_pair_scoring(corpus, tiny_model, naive_scores, pair_batch):
    result = evaluate_full_retrieval(tiny_model, corpus, pair_batch=pair_batch)
    assert result.full.pairs == naive_scores.numel()
    assert torch.allclose(result.scores, naive_scores, atol=1e-5)
    owners = torch.as_tensor(corpus.caption_to_image)
    assert torch.equal(text_to_image_ranks(result.scores, owners), text_to_image_ranks(naive_scores, owners))
    assert torch.equal(image_to_text_ranks(result.scores, owners), image_to_text_ranks(naive_scores, owners))
    assert result.full.metrics == retrieval_metrics(naive_scores, owners)


def test_two_stage_rescoring_every_candidate_reproduces_the_full_figures(corpus, tiny_model, naive_scores):
    result = evaluate_full_retrieval(tiny_model, corpus, pair_batch=16, two_stage_k=len(corpus),
                                     first_stage_regions=2)
    two = result.two_stage
    assert two["rescored_pairs"] == naive_scores.numel()
    assert two["run"].metrics == pytest.approx(result.full.metrics)


def test_two_stage_with_a_small_k_ranks_outside_candidates_below_them(corpus, tiny_model):
    result = evaluate_full_retrieval(tiny_model, corpus, pair_batch=16, two_stage_k=1, first_stage_regions=2)
    two = result.two_stage
    first, owners = two["first_stage_scores"], torch.as_tensor(corpus.caption_to_image)
    # With one candidate per caption (and per image), the own match is at rank 1 exactly where the
    # first stage put it on top; everywhere else it lies outside the candidates, below rank 1.
    assert two["run"].metrics["t2i_r@1"] == pytest.approx((first.argmax(1) == owners).float().mean().item())
    top_caption = first.argmax(0)
    assert two["run"].metrics["i2t_r@1"] == pytest.approx(
        (owners[top_caption] == torch.arange(first.shape[1])).float().mean().item())
    candidates = ({(c, int(i)) for c, i in enumerate(first.argmax(1))}
                  | {(int(c), i) for i, c in enumerate(top_caption)})
    assert two["rescored_pairs"] == len(candidates)


def _score_on_rank(rank: int, world: int, init_file: str, corpus_dir: str, out: str) -> None:
    import torch.distributed as dist

    from interbert.modeling import InterBertConfig, InterBertForPretraining

    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    torch.manual_seed(0)
    model = InterBertForPretraining(InterBertConfig.from_preset("tiny")).eval()
    corpus = RetrievalCorpus(f"{corpus_dir}/features", f"{corpus_dir}/captions.jsonl", split="val", max_regions=12)
    result = evaluate_full_retrieval(model, corpus, pair_batch=5)
    torch.save(result.scores, f"{out}.{rank}")
    dist.destroy_process_group()


def test_two_ranks_share_the_pairs_and_gather_the_same_matrix(ft_corpus, tiny_model, corpus, tmp_path):
    import torch.multiprocessing as mp

    torch.manual_seed(0)
    single = evaluate_full_retrieval(tiny_model, corpus, pair_batch=5).scores
    out = str(tmp_path / "scores")
    mp.spawn(_score_on_rank, args=(2, str(tmp_path / "init"), str(ft_corpus), out), nprocs=2)
    for rank in (0, 1):
        assert torch.allclose(torch.load(f"{out}.{rank}"), single, atol=1e-5)
