"""The run-folder contract on two hosts: every host must see the same --output-dir and the same
inputs. The second loopback host sees a tmpfs of its own over `node_local` (a cluster's /tmp), so
a folder there is what node-local disks give: checked at start, one line naming the host, exit
status 2 on both hosts, before any training step and without a hang."""
from __future__ import annotations

import shutil

import pytest

from tests.helpers.two_host_jobs import run

pytestmark = pytest.mark.slow


@pytest.fixture
def node_local(two_hosts, tmp_path):
    if not two_hosts.node_local_isolated:
        pytest.skip("no mount namespace here (unshare --mount failed): a node-local folder cannot be made")
    folder = two_hosts.node_local / tmp_path.name
    folder.mkdir()
    yield folder
    shutil.rmtree(folder, ignore_errors=True)


def test_an_output_dir_that_is_not_shared_stops_every_host_before_training(two_hosts, corpus, node_local, tmp_path):
    output = node_local / "run"
    status, log = run(two_hosts, tmp_path, corpus, output, "--max-steps", "2", timeout=120)
    assert status == 2, log[-3000:]
    errors = [line for line in log.splitlines() if "interbert/pretrain.py: error:" in line]
    assert errors and all("on 127.0.0.2 (rank 1): --output-dir" in line for line in errors), log[-3000:]
    assert "every host must see the same --output-dir" in errors[0]
    assert sorted(line.split(": ", 1)[0] for line in errors) == ["127.0.0.1", "127.0.0.2"]  # both hosts said it
    assert "Traceback" not in log
    assert not (output / "train_log.jsonl").exists()


def test_features_one_host_cannot_see_are_named_with_that_host(two_hosts, corpus, node_local, tmp_path):
    local_corpus = node_local / "corpus"
    shutil.copytree(corpus, local_corpus)  # only the first host sees it
    status, log = run(two_hosts, tmp_path, local_corpus, tmp_path / "run", "--max-steps", "2", timeout=120)
    assert status == 2, log[-3000:]
    assert "on 127.0.0.2 (rank 1): --features" in log, log[-3000:]
    assert "Traceback" not in log
