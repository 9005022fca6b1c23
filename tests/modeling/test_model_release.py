"""The released checkpoint's layout converts, loads, and computes what the release computes.

`release_forward` below is an independent, functional transcription of the released model
(shared/reference/release-checkpoint.md) that reads the raw released state_dict: additive
-10000 masks, regions first, ITM class 0 = matched. The converted model must agree with it.
"""
from __future__ import annotations

import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import save_file

from interbert.cli import main
from interbert.config import InterBertConfig
from interbert.modeling import InterBertForPretraining
from interbert.modeling.release import convert_release, convert_release_state_dict

KEYS_TSV = Path(__file__).parent / "fixtures" / "release-checkpoint-keys.tsv"


def release_layout(config: InterBertConfig | None = None) -> dict[str, tuple[int, ...]]:
    """Released key -> shape, read from the published key list and, for a smaller config,
    with every released dimension replaced by the config's."""
    rows = [line.split("\t") for line in KEYS_TSV.read_text().splitlines()[1:]]
    layout = {key: tuple(int(d) for d in shape.split("x")) for key, shape, _ in rows}
    if config is None:
        return layout
    text_layers = config.interaction.num_layers + config.text_extraction.num_layers
    dims = {768: config.hidden_size, 3072: config.interaction.intermediate_size,
            30522: config.vocab_size, 512: config.max_position_embeddings,
            2048: config.region_feature_size, 1024: config.pooled_size,
            1601: config.num_region_classes}
    scaled = {}
    for key, shape in layout.items():
        parts = key.split(".")
        if parts[1:3] == ["encoder", "layer"] and parts[3] != "0":
            continue
        if parts[1:3] == ["encoder", "v_layer"] and parts[3] != "0":
            continue
        new_shape = tuple(dims.get(d, d) for d in shape)
        if parts[1:3] == ["encoder", "layer"]:
            for i in range(text_layers):
                scaled[key.replace("layer.0.", f"layer.{i}.")] = new_shape
        elif parts[1:3] == ["encoder", "v_layer"]:
            ffn = config.image_extraction.intermediate_size
            v_shape = tuple(ffn if d == 3072 else dims.get(d, d) for d in shape)
            for i in range(config.image_extraction.num_layers):
                scaled[key.replace("v_layer.0.", f"v_layer.{i}.")] = v_shape
        else:
            scaled[key] = new_shape
    return scaled


def random_release_state(layout, seed=0):
    generator = torch.Generator().manual_seed(seed)
    state = {key: torch.randn(shape, generator=generator) * 0.05 for key, shape in layout.items()}
    for key, value in state.items():
        if key.endswith("LayerNorm.weight"):
            state[key] = 1 + value
    state["cls.predictions.decoder.weight"] = state["bert.embeddings.word_embeddings.weight"]
    return state


# ----------------------------------------------------------------- the released computation
def _linear(state, prefix, x):
    return x @ state[prefix + ".weight"].T + state[prefix + ".bias"]


def _layer_norm(state, prefix, x):
    return F.layer_norm(x, x.shape[-1:], state[prefix + ".weight"], state[prefix + ".bias"], 1e-12)


def _bert_layer(state, prefix, x, additive_mask, heads):
    batch, length, hidden = x.shape
    size = hidden // heads

    def split(t):
        return t.view(batch, length, heads, size).permute(0, 2, 1, 3)

    q, k, v = (split(_linear(state, f"{prefix}.attention.self.{n}", x)) for n in ("query", "key", "value"))
    scores = q @ k.transpose(-1, -2) / math.sqrt(size) + additive_mask
    context = (scores.softmax(-1) @ v).permute(0, 2, 1, 3).reshape(batch, length, hidden)
    attended = _layer_norm(state, f"{prefix}.attention.output.LayerNorm",
                           _linear(state, f"{prefix}.attention.output.dense", context) + x)
    inner = F.gelu(_linear(state, f"{prefix}.intermediate.dense", attended))
    return _layer_norm(state, f"{prefix}.output.LayerNorm",
                       _linear(state, f"{prefix}.output.dense", inner) + attended)


def release_forward(state, config, batch):
    """Returns (P(matched) per pair, MSM logits B×T×V, MRM logits B×R×C)."""
    ids, types = batch["input_ids"], batch["token_type_ids"]
    positions = torch.arange(ids.shape[1])
    text = _layer_norm(state, "bert.embeddings.LayerNorm",
                       state["bert.embeddings.word_embeddings.weight"][ids]
                       + state["bert.embeddings.position_embeddings.weight"][positions]
                       + state["bert.embeddings.token_type_embeddings.weight"][types])
    regions = _layer_norm(state, "bert.v_embeddings.LayerNorm",
                          _linear(state, "bert.v_embeddings.image_embeddings", batch["region_features"])
                          + _linear(state, "bert.v_embeddings.image_location_embeddings", batch["region_locations"]))

    def additive(mask):
        return (1.0 - mask.float())[:, None, None, :] * -10000.0

    num_regions = regions.shape[1]
    joint = torch.cat([regions, text], 1)
    joint_mask = additive(torch.cat([batch["region_mask"], batch["text_mask"]], 1))
    n_interaction = config.interaction.num_layers
    for i in range(n_interaction):
        joint = _bert_layer(state, f"bert.encoder.layer.{i}", joint, joint_mask,
                            config.interaction.num_attention_heads)
    text, regions = joint[:, num_regions:], joint[:, :num_regions]
    for i in range(config.text_extraction.num_layers):
        text = _bert_layer(state, f"bert.encoder.layer.{n_interaction + i}", text,
                           additive(batch["text_mask"]), config.text_extraction.num_attention_heads)
    for i in range(config.image_extraction.num_layers):
        regions = _bert_layer(state, f"bert.encoder.v_layer.{i}", regions,
                              additive(batch["region_mask"]), config.image_extraction.num_attention_heads)
    pooled_text = torch.relu(_linear(state, "bert.t_pooler.dense", text[:, 0]))
    pooled_image = torch.relu(_linear(state, "bert.v_pooler.dense", regions[:, 0]))
    itm = _linear(state, "cls.bi_seq_relationship", pooled_text * pooled_image)
    msm = _layer_norm(state, "cls.predictions.transform.LayerNorm",
                      F.gelu(_linear(state, "cls.predictions.transform.dense", text)))
    msm = msm @ state["cls.predictions.decoder.weight"].T + state["cls.predictions.bias"]
    mrm = _layer_norm(state, "cls.imagePredictions.transform.LayerNorm",
                      F.gelu(_linear(state, "cls.imagePredictions.transform.dense", regions)))
    mrm = _linear(state, "cls.imagePredictions.decoder", mrm)
    return itm.softmax(-1)[:, 0], msm, mrm


@pytest.fixture
def release_like_config(small_config):
    values = small_config.to_dict()
    for stream in ("interaction", "text_extraction"):
        values[stream].update(num_attention_heads=4, intermediate_size=96)
    values["image_extraction"].update(num_attention_heads=3, intermediate_size=64)
    return InterBertConfig.from_dict(values)


def test_converted_model_computes_what_the_release_computes(tmp_path, release_like_config, batch_factory):
    config = release_like_config
    state = random_release_state(release_layout(config))
    torch.save({"module." + k: v for k, v in state.items()}, tmp_path / "pytorch_model_9.bin")
    convert_release(tmp_path / "pytorch_model_9.bin", tmp_path / "converted", config)
    model = InterBertForPretraining.from_pretrained(tmp_path / "converted").eval()

    batch = batch_factory(config, [7, 4, 5], [6, 3, 5])
    labels = {"msm_labels": torch.full(batch["input_ids"].shape, -100),
              "mrm_labels": torch.full(batch["region_mask"].shape, -100)}
    labels["msm_labels"][:, 1] = 3
    labels["mrm_labels"][:, 2] = 5
    with torch.no_grad():
        matched, msm, mrm = release_forward(state, config, batch)
        ours = model.itm_score(**batch)
        output = model.interbert(**batch)
        msm_ours = model.msm_head(output.text_hidden[:, 1], model.interbert.embeddings.word_embeddings.weight)
        mrm_ours = model.mrm_head(output.image_hidden[:, 2])
    assert torch.allclose(ours, matched, atol=1e-5)  # class order: release 0 = our 1
    assert torch.allclose(msm_ours, msm[:, 1], atol=1e-4)
    assert torch.allclose(mrm_ours, mrm[:, 2], atol=1e-4)


def test_the_full_release_layout_converts_and_every_key_is_consumed():
    layout = release_layout()
    assert len(layout) == 317
    state = random_release_state(layout)
    config = InterBertConfig.from_preset("release-base")
    converted, task_heads = convert_release_state_dict(state, config)
    model = InterBertForPretraining(config)
    assert set(converted) == set(model.state_dict())  # nothing missing, nothing left over
    assert task_heads == {}
    assert torch.equal(converted["itm_head.classifier.weight"][1], state["cls.bi_seq_relationship.weight"][0])
    assert torch.equal(converted["itm_head.classifier.bias"][0], state["cls.bi_seq_relationship.bias"][1])


def test_fine_tuned_release_heads_are_kept(tmp_path, release_like_config):
    state = random_release_state(release_layout(release_like_config))
    hidden, pooled = release_like_config.hidden_size, release_like_config.pooled_size
    extra = {"vil_prediction.weight": torch.randn(3, pooled), "vil_logit.weight": torch.randn(1, pooled),
             "vision_logit.weight": torch.randn(1, hidden), "linguisic_logit.weight": torch.randn(1, hidden)}
    torch.save({**state, **extra}, tmp_path / "finetuned.bin")
    report = convert_release(tmp_path / "finetuned.bin", tmp_path / "out", release_like_config)
    assert report.task_heads == sorted(extra)
    from safetensors.torch import load_file
    kept = load_file(str(tmp_path / "out" / "release_task_heads.safetensors"))
    assert torch.equal(kept["vil_logit.weight"], extra["vil_logit.weight"])


def test_unknown_and_missing_keys_are_listed(release_like_config):
    state = random_release_state(release_layout(release_like_config))
    state["bert.encoder.mystery.weight"] = torch.zeros(1)
    del state["bert.t_pooler.dense.bias"]
    with pytest.raises(ValueError) as error:
        convert_release_state_dict(state, release_like_config, source="x.bin")
    message = str(error.value)
    assert "unknown keys (not part of the released layout): bert.encoder.mystery.weight" in message
    assert "missing keys (the model needs them): interbert.text_pooler.dense.bias" in message


def test_an_untied_decoder_is_refused(release_like_config):
    state = random_release_state(release_layout(release_like_config))
    state["cls.predictions.decoder.weight"] = state["cls.predictions.decoder.weight"] + 1
    with pytest.raises(ValueError, match="differs from bert.embeddings.word_embeddings.weight"):
        convert_release_state_dict(state, release_like_config)


def test_convert_release_command(tmp_path, release_like_config, capsys):
    torch.save(random_release_state(release_layout(release_like_config)), tmp_path / "r.bin")
    release_like_config.to_json_file(tmp_path / "layout.json")
    status = main(["convert-release", "--out", str(tmp_path / "m"), "--config",
                   str(tmp_path / "layout.json"), str(tmp_path / "r.bin")])
    assert status == 0
    assert "converted" in capsys.readouterr().out
    InterBertForPretraining.from_pretrained(tmp_path / "m")
    assert main(["convert-release", "--out", str(tmp_path / "n"), str(tmp_path / "r.bin")]) == 2
    assert "does not convert into the given layout" in capsys.readouterr().err

    # an existing model directory is replaced only with --overwrite
    before = (tmp_path / "m" / "model.safetensors").read_bytes()
    args = ["convert-release", "--out", str(tmp_path / "m"), "--config", str(tmp_path / "layout.json"),
            str(tmp_path / "r.bin")]
    assert main(args) == 2
    assert f"{tmp_path / 'm'} already exists; choose another --out or pass --overwrite" in capsys.readouterr().err
    assert (tmp_path / "m" / "model.safetensors").read_bytes() == before
    assert main(args + ["--overwrite"]) == 0


def test_a_vcr_head_starts_from_the_release_vil_logit(tmp_path, release_like_config, batch_factory):
    from interbert.finetuning.model import InterBertForFinetuning, TaskSpec

    config = release_like_config
    state = random_release_state(release_layout(config))
    vil_logit = {"vil_logit.weight": torch.randn(1, config.pooled_size), "vil_logit.bias": torch.randn(1)}
    torch.save({**state, **vil_logit}, tmp_path / "finetuned.bin")
    convert_release(tmp_path / "finetuned.bin", tmp_path / "out", config)

    model = InterBertForFinetuning.from_pretrained(tmp_path / "out", TaskSpec("vcr", "multiple_choice")).eval()
    assert "release's vil_logit" in model.head_source
    flat = batch_factory(config, [7, 4, 5, 6], [6, 3, 5, 2])
    with torch.no_grad():
        scores = model.predict(**{key: value[None] for key, value in flat.items()})  # 1 question × 4 choices
        output = model.pretraining.interbert(**flat)
    pooled = output.pooled_text * output.pooled_image
    expected = pooled @ vil_logit["vil_logit.weight"].T + vil_logit["vil_logit.bias"]
    assert torch.allclose(scores[0], expected[:, 0], atol=1e-5)

    fresh = InterBertForFinetuning.from_pretrained(tmp_path / "out", TaskSpec("glue-sst2", "classification", 2))
    assert fresh.head_source == "a new head"


def test_a_release_vil_logit_of_another_width_is_refused(tmp_path, release_like_config):
    from interbert.finetuning.model import InterBertForFinetuning, TaskSpec

    state = random_release_state(release_layout(release_like_config))
    wrong = {"vil_logit.weight": torch.randn(1, release_like_config.pooled_size + 8), "vil_logit.bias": torch.randn(1)}
    torch.save({**state, **wrong}, tmp_path / "finetuned.bin")
    convert_release(tmp_path / "finetuned.bin", tmp_path / "out", release_like_config)
    with pytest.raises(ValueError, match=r"release_task_heads\.safetensors: vil_logit\.weight has shape"):
        InterBertForFinetuning.from_pretrained(tmp_path / "out", TaskSpec("vcr", "multiple_choice"))


# ----------------------------------------------------------------- files the CLI cannot use
REPO = Path(__file__).resolve().parents[2]
UNSAFE_ADVICE = ("weights_only", "re-run torch.load", "Weights only load failed")


def convert_release_cli(checkpoint: Path, out: Path) -> subprocess.CompletedProcess:
    """`python -m interbert convert-release`, exactly as a user runs it."""
    return subprocess.run([sys.executable, "-m", "interbert", "convert-release", "--out", str(out), str(checkpoint)],
                          cwd=REPO, capture_output=True, text=True, timeout=120, check=False)


def one_line(result: subprocess.CompletedProcess) -> str:
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr, result.stderr
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, result.stderr
    assert not any(advice in lines[0] for advice in UNSAFE_ADVICE), lines[0]
    return lines[0]


def write_release(path: Path, config, writer: str) -> Path:
    """The released layout written by a real writer: torch.save (zip, or the pre-zip format of
    older torch releases) or safetensors."""
    state = {"module." + key: value for key, value in random_release_state(release_layout(config)).items()}
    if writer == "safetensors":
        save_file({key: value.clone() for key, value in state.items()}, str(path))  # the tied decoder: a copy
    else:
        torch.save(state, path, _use_new_zipfile_serialization=writer == "torch.save")
    return path


@pytest.mark.parametrize("name, writer, cut", [
    ("pytorch_model_9.bin", "torch.save", "half"),
    ("pytorch_model_9.bin", "torch.save", "size-10"),
    ("pytorch_model_9.bin", "torch.save (pre-zip)", "half"),
    ("pytorch_model_9.safetensors", "safetensors", "half"),
    ("pytorch_model_9.safetensors", "safetensors", "size-10"),
])
def test_a_release_file_cut_short_is_named_incomplete_with_its_size(tmp_path, release_like_config, name, writer, cut):
    release = write_release(tmp_path / name, release_like_config, writer)
    data = release.read_bytes()
    keep = len(data) // 2 if cut == "half" else len(data) - 10
    release.write_bytes(data[:keep])  # a download cut short

    line = one_line(convert_release_cli(release, tmp_path / "model"))
    assert line.startswith(f"interbert convert-release: {release}: incomplete: "), line
    assert f"ends at byte {keep:,}" in line
    assert "download or copy it again, and check that its size matches the source's" in line
    assert not (tmp_path / "model").exists()


class RunsACommand:
    def __init__(self, marker: str):
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


def test_a_release_file_that_carries_code_is_refused_naming_the_global(tmp_path, release_like_config):
    state = random_release_state(release_layout(release_like_config))
    marker = tmp_path / "the-payload-ran"
    state["bert.embeddings.word_embeddings.weight"] = RunsACommand(str(marker))
    release = tmp_path / "pytorch_model_9.bin"
    torch.save(state, release)

    line = one_line(convert_release_cli(release, tmp_path / "model"))
    assert f"{release}: refused to load: the file holds the Python global posix.system" in line
    assert not marker.exists() and not (tmp_path / "model").exists()
