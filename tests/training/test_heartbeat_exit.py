"""`Heartbeat.stop()` returns only once the heartbeat thread has left the rendezvous store: a daemon
thread still inside a store call when the interpreter exits is ended mid-C++ and aborts the process
("terminate called without an active exception", exit -6). Real TCPStore, real thread. And a silent
rank is killed by the rank that names it only when it is that very process of this machine."""
from datetime import timedelta

from interbert.training.watchdog import Heartbeat
from tests.helpers.training_runs import free_port


def test_stop_waits_for_the_thread_to_leave_the_store(monkeypatch):
    port = free_port()
    monkeypatch.setenv("MASTER_ADDR", "127.0.0.1")
    monkeypatch.setenv("MASTER_PORT", str(port))
    from torch.distributed import TCPStore

    server = TCPStore("127.0.0.1", port, is_master=True, timeout=timedelta(seconds=30), wait_for_workers=False)
    for _ in range(20):  # the thread is inside a store call nearly all the time (no pause between beats)
        beat = Heartbeat(rank=1, world_size=2, timeout=60, interval=0.0).start()
        assert beat._thread is not None
        while not server.check([f"{beat.prefix}/beat/1"]):
            pass
        beat.stop()
        assert not beat._thread.is_alive()
        server.delete_key(f"{beat.prefix}/beat/1")


class _Store:
    def __init__(self, values: dict[str, str]):
        self.values = values

    def get(self, key: str) -> bytes:
        return self.values[key].encode()


def test_a_silent_rank_is_killed_only_when_its_identity_is_this_machines_process():
    import subprocess

    from interbert.training.watchdog import Heartbeat, _process_identity

    sleeper = subprocess.Popen(["sleep", "60"])
    try:
        heartbeat = Heartbeat(rank=0, world_size=2, timeout=5)
        identity = _process_identity(sleeper.pid)
        boot, pid, started = identity.split()
        key = f"{heartbeat.prefix}/process/1"
        for other_process in (f"{boot} {pid} {int(started) + 1}", f"another-machine {pid} {started}", ""):
            assert not heartbeat._kill_if_here(_Store({key: other_process}), 1)
            assert sleeper.poll() is None  # the same pid, but not the registered process: left alone
        assert heartbeat._kill_if_here(_Store({key: identity}), 1)
        assert sleeper.wait(timeout=10) == -9
    finally:
        sleeper.kill()
