"""`Heartbeat.stop()` returns only once the heartbeat thread has left the rendezvous store: a daemon
thread still inside a store call when the interpreter exits is ended mid-C++ and aborts the process
("terminate called without an active exception", exit -6). Real TCPStore, real thread."""
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
