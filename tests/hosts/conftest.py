"""Two loopback hosts (tests/hosts/loopback_hosts.py), once per session; the training tests'
helpers are imported from tests/training."""
from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))
sys.path.insert(0, str(Path(__file__).parents[1] / "training"))

from loopback_hosts import LoopbackHosts, missing_tools  # noqa: E402


@pytest.fixture(scope="session")
def two_hosts(tmp_path_factory):
    reason = missing_tools()
    if reason:
        pytest.skip(f"two loopback hosts cannot be made here: {reason}")
    hosts = LoopbackHosts(tmp_path_factory.mktemp("hosts")).start()
    yield hosts
    hosts.stop()
