"""A conversion stopped by SIGTERM (a scheduler's stop, ``kill``) or Ctrl-C removes what it was
writing: no store under the final name, no ``OUT.tmp-<pid>`` left, exit status 130."""
from __future__ import annotations

import subprocess
import sys
import textwrap

import pytest

from tests.helpers.data import make_record, tsv_row

# Runs `interbert data convert-tsv`, sending the signal to itself when the writer gets its third
# image: the stop lands mid-conversion with records already written to the temporary store.
SCRIPT = textwrap.dedent("""
    import os, signal, sys
    signal.signal(signal.SIGINT, signal.default_int_handler)  # a runner started in the background ignores it
    from interbert.cli import main
    from interbert.data.store.writer import FeatureStoreWriter

    add, calls = FeatureStoreWriter.add_encoded, []
    def add_then_stop(self, *args, **kwargs):
        calls.append(1)
        if len(calls) == 3:
            os.kill(os.getpid(), getattr(signal, sys.argv[1]))
        return add(self, *args, **kwargs)
    FeatureStoreWriter.add_encoded = add_then_stop
    sys.exit(main(["data", "convert-tsv", "--workers", sys.argv[2], "--out", sys.argv[3], sys.argv[4]]))
""")


@pytest.mark.parametrize("signal_name,workers", [("SIGTERM", "1"), ("SIGTERM", "2"), ("SIGINT", "2")])
def test_a_stopped_conversion_leaves_nothing(tmp_path, signal_name, workers):
    tsv = tmp_path / "a.tsv"
    tsv.write_text("".join(tsv_row(make_record(str(i), seed=i)) for i in range(8)))
    out = tmp_path / "store"
    result = subprocess.run([sys.executable, "-c", SCRIPT, signal_name, workers, str(out), str(tsv)],
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 130, result.stderr
    assert f"interrupted ({signal_name}); nothing was written under {out}" in result.stderr
    assert "Traceback" not in result.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.tsv"]


def test_a_killed_runs_temporary_store_is_named_and_left_alone(tmp_path, capsys):
    from interbert.cli import main

    tsv = tmp_path / "a.tsv"
    tsv.write_text(tsv_row(make_record("1")))
    stale = tmp_path / "store.tmp-999999999"  # no such process
    stale.mkdir()
    (stale / "data.mdb").write_bytes(b"half")
    assert main(["data", "convert-tsv", "--out", str(tmp_path / "store"), str(tsv)]) == 0
    assert f"note: {stale} is left from an earlier run of this conversion that was killed" in capsys.readouterr().err
    assert (stale / "data.mdb").read_bytes() == b"half"
