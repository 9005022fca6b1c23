"""--skip-corrupt: a training record whose bytes changed after it was written fails its checksum;
the run then stops naming the image, or, with the flag, drops that image's samples, logging each
with the image id, and finishes."""
from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from interbert.data.store.environment_cache import forget_environment
from interbert.data.store.reader import FeatureStore
from tests.helpers.data import put_raw
from tests.helpers.ds_config import write_ds_config
from tests.helpers.train_log import read_train_log
from tests.helpers.training_runs import PRETRAIN, REPO, VOCAB, explain, subprocess_env

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def damaged(corpus, tmp_path_factory):
    """A copy of the corpus whose first training image has one flipped feature byte."""
    root = tmp_path_factory.mktemp("damaged") / "corpus"
    shutil.copytree(corpus, root)
    store = root / "features"
    lines = map(json.loads, (root / "captions.jsonl").read_text().splitlines())
    image_id = next(line["image_id"] for line in lines if line["split"] == "train")
    data = bytearray(FeatureStore(store).get_bytes(image_id))
    forget_environment(store)
    data[len(data) // 2] ^= 0x40
    put_raw(store, image_id, bytes(data))
    return root, image_id


def pretrain(root: Path, output: Path, *extra: str) -> subprocess.CompletedProcess:
    # 160 training captions in micro-batches of 32: one epoch is 5 steps and reads every record.
    config = write_ds_config(output.parent / f"{output.name}.json", micro=32, world=1)
    command = [sys.executable, PRETRAIN, "--deepspeed_config", str(config), "--preset", "tiny",
               "--features", str(root / "features"), "--captions", str(root / "captions.jsonl"),
               "--output-dir", str(output), "--epochs", "1", "--num-workers", "1", "--log-every", "1",
               "--validation-split", "", "--eval-images", "0", "--save-every", "0", "--vocab", VOCAB, *extra]
    return subprocess.run(command, cwd=REPO, env=subprocess_env(), capture_output=True, text=True, timeout=300)


def test_a_corrupt_record_stops_the_run_naming_the_image(damaged, tmp_path):
    root, image_id = damaged
    result = pretrain(root, tmp_path / "run")
    assert result.returncode == 2, explain(result)
    assert f"record {image_id!r} is corrupt" in result.stderr and "checksum mismatch" in result.stderr
    assert "--skip-corrupt" in result.stderr


def test_skip_corrupt_drops_the_images_samples_and_finishes(damaged, tmp_path):
    root, image_id = damaged
    result = pretrain(root, tmp_path / "run", "--skip-corrupt")
    assert result.returncode == 0, explain(result)
    skips = [line for line in result.stderr.splitlines() if "skipped sample" in line]
    assert len(skips) == 5 and all(f"record {image_id!r} is corrupt" in line for line in skips)  # 5 captions
    steps = read_train_log(tmp_path / "run")
    assert [s["step"] for s in steps] == [1, 2, 3, 4, 5]
