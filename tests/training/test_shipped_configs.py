"""The shipped DeepSpeed configs and hostfiles are found without the source checkout's folder as
the working directory: the wheel carries them under share/interbert/, `interbert configs` lists
them, and a --deepspeed_config that names one is read from there."""
from __future__ import annotations

import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from interbert import resources
from interbert.training.ds_config import ConfigError, load_ds_config
from tests.helpers.training_runs import REPO


def test_the_wheel_carries_every_config_and_hostfile(tmp_path):
    pytest.importorskip("setuptools")  # the build backend, used without isolation (no index needed)
    # pip builds a local directory in place (build/, *.egg-info): build a copy, not the checkout.
    source = tmp_path / "source"
    source.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copyfile(REPO / name, source / name)
    for name in ("interbert", *resources.KINDS):
        shutil.copytree(REPO / name, source / name, ignore=shutil.ignore_patterns("__pycache__"))
    subprocess.run([sys.executable, "-m", "pip", "wheel", str(source), "--no-deps", "--no-build-isolation", "-q",
                    "-w", str(tmp_path / "dist")], check=True, capture_output=True, timeout=300)
    (wheel,) = (tmp_path / "dist").glob("interbert-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    for kind in resources.KINDS:
        for path in (p for p in (REPO / kind).rglob("*") if p.is_file()):
            inside = path.relative_to(REPO / kind).as_posix()
            assert any(name.endswith(f".data/data/share/interbert/{kind}/{inside}") for name in names), path


def test_an_installed_prefix_is_searched_after_the_checkout(tmp_path, monkeypatch):
    shared = tmp_path / "share" / "interbert" / "ds_configs"
    shared.mkdir(parents=True)
    (shared / "site.json").write_text('{"train_batch_size": 8}')
    monkeypatch.setattr(sys, "prefix", str(tmp_path))
    assert resources.find_shipped("site.json") == shared / "site.json"
    assert resources.find_shipped("pretrain_v100x8.json") == REPO / "ds_configs" / "pretrain_v100x8.json"
    assert resources.find_shipped("no-such.json") is None


def test_a_config_named_from_another_folder_is_read_from_the_shipped_copy(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert load_ds_config("ds_configs/pretrain_v100x8.json")["train_batch_size"] == 512
    with pytest.raises(ConfigError, match=r"no such file, and no shipped config of that name \(benchmark_cpu_bf16"):
        load_ds_config("ds_configs/pretrain_v100x9.json")


def test_interbert_configs_prints_the_paths(capsys):
    from interbert.cli import main

    assert main(["configs", "--path", "v100x8"]) == 0
    assert Path(capsys.readouterr().out.strip()) == REPO / "hostfiles" / "v100x8"
    assert main(["configs"]) == 0
    listing = capsys.readouterr().out
    assert "ds_configs:" in listing and "pretrain_cpu_demo.json" in listing and "two_nodes_v100x8" in listing
    assert main(["configs", "--path", "nope"]) == 2


@pytest.mark.parametrize("gpus, accumulation", [(8, 2), (16, 1), (4, 4)])
def test_the_v100_config_is_512_with_micro_batch_32_and_derived_accumulation(gpus, accumulation):
    from interbert.training.ds_config import resolve_batch_sizes

    config = load_ds_config(str(REPO / "ds_configs" / "pretrain_v100x8.json"))
    assert "gradient_accumulation_steps" not in config
    resolved = resolve_batch_sizes(config, gpus, "pretrain_v100x8.json")
    assert (resolved["train_batch_size"], resolved["train_micro_batch_size_per_gpu"]) == (512, 32)
    assert resolved["gradient_accumulation_steps"] == accumulation
    assert resolved["fp16"]["enabled"] and resolved["zero_optimization"]["stage"] == 1
