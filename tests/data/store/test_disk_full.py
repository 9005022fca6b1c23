"""A disk that fills during a store's build (simulated by a file-size limit: the writes fail with
EFBIG as they would with ENOSPC) is one line naming the store and the disk, exit 2, and leaves no
temporary folder behind."""
import subprocess
import sys

LIMITED = """
import resource, signal, sys
signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
resource.setrlimit(resource.RLIMIT_FSIZE, (2_000_000, 2_000_000))
from interbert.cli import main
sys.exit(main(sys.argv[1:]))
"""


def test_a_full_disk_during_a_build_is_one_line_and_leaves_nothing(tmp_path):
    out = tmp_path / "store"
    result = subprocess.run([sys.executable, "-c", LIMITED, "data", "synth", "--out", str(out), "--images", "200"],
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 2, result.stderr[-2000:]
    assert "Traceback" not in result.stderr
    error = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert len(error) == 1 and str(out) in error[0] and "check free disk space" in error[0]
    assert list(tmp_path.iterdir()) == []
