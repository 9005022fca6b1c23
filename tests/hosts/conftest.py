"""Two loopback hosts (tests/helpers/loopback_hosts.py), once per session."""
from __future__ import annotations

import pytest

from tests.helpers.loopback_hosts import LoopbackHosts, missing_tools


@pytest.fixture(scope="session")
def two_hosts(tmp_path_factory):
    reason = missing_tools()
    if reason:
        pytest.skip(f"two loopback hosts cannot be made here: {reason}")
    hosts = LoopbackHosts(tmp_path_factory.mktemp("hosts")).start()
    yield hosts
    hosts.stop()
