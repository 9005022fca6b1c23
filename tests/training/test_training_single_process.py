import os
import socket

from interbert.training.distributed import discover_job


def test_a_lone_process_rendezvous_on_a_free_port(monkeypatch):
    for key in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT",
                "OMPI_COMM_WORLD_SIZE", "PMI_SIZE", "PMIX_RANK"):
        monkeypatch.setenv(key, "")  # recorded, so teardown restores what was there
        monkeypatch.delenv(key)
    with socket.socket() as busy:  # another job already holds the usual default port
        busy.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            busy.bind(("127.0.0.1", 29500))
            busy.listen()
        except OSError:
            pass  # held by someone else already: the point stands
        placement = discover_job(None)
        port = int(os.environ["MASTER_PORT"])
    assert placement.world_size == 1 and placement.launcher == "single process"
    assert port != 29500
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", port))
