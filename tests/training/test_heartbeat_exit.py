"""A rank that ends while its heartbeat thread is inside a store call must exit cleanly: a daemon thread
ended mid-C++ at interpreter exit aborts the process ("terminate called without an active exception",
exit -6), which failed a finished two-rank job. Real gloo process group, real TCPStore, two processes."""
import subprocess
import sys
import textwrap

from training_test_helpers import REPO, free_port, subprocess_env

RANK = textwrap.dedent("""
    import os, sys, time
    import torch.distributed as dist
    from interbert.training.watchdog import Heartbeat
    rank, port = int(sys.argv[1]), sys.argv[2]
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=port)
    dist.init_process_group("gloo", rank=rank, world_size=2)
    beat = Heartbeat(rank, 2, timeout=60, interval=0.0).start()  # always inside a store call
    time.sleep(0.5)
    dist.barrier()
    beat.stop()
    dist.destroy_process_group()
""")


def test_ranks_exit_cleanly_with_a_busy_heartbeat(tmp_path):
    script = tmp_path / "rank.py"
    script.write_text(RANK)
    for attempt in range(3):  # without the wait in Heartbeat.stop, nearly every attempt aborts
        port = str(free_port())
        ranks = [subprocess.Popen([sys.executable, str(script), str(rank), port], cwd=REPO, env=subprocess_env(),
                                  stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True) for rank in (0, 1)]
        for rank, process in enumerate(ranks):
            output, _ = process.communicate(timeout=60)
            assert process.returncode == 0, f"attempt {attempt}, rank {rank} exited {process.returncode}:\n{output}"
            assert "terminate called" not in output
