"""This process's read-only LMDB handles, one per store path, reopened after a fork."""
from __future__ import annotations

import os

import lmdb

from interbert.data.store.errors import FeatureStoreError

# py-lmdb allows one open handle per path and process, so every FeatureStore of one path in one
# process shares it: realpath -> (pid that opened it, environment).
_ENVIRONMENTS: dict = {}


def forget_environment(path) -> None:
    """Close this process's handle on ``path`` (the store there is being replaced)."""
    entry = _ENVIRONMENTS.pop(os.path.realpath(path), None)
    if entry is not None and entry[0] == os.getpid():
        entry[1].close()


def shared_environment(path: str) -> lmdb.Environment:
    """This process's read-only handle on the single store at ``path``."""
    key, pid = os.path.realpath(path), os.getpid()
    entry = _ENVIRONMENTS.get(key)
    if entry is not None and entry[0] == pid:
        return entry[1]
    if entry is not None:
        # Inherited through fork: a handle must not be used across fork. Without a lock file,
        # closing it here only unmaps the child's copy; the parent's handle is untouched.
        entry[1].close()
    try:
        env = lmdb.open(path, readonly=True, lock=False, readahead=False, meminit=False, max_readers=2048)
    except lmdb.Error as error:
        raise FeatureStoreError(f"feature store {path}: cannot open ({error})") from None
    _ENVIRONMENTS[key] = (pid, env)
    return env
