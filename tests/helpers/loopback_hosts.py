"""Two hosts on one machine for the several-hosts tests: a private sshd on 127.0.0.1 and one on
127.0.0.2, each on a port of its own choosing, root by a key made in a temporary folder.

Nothing of the machine's own ssh set-up is used or changed: the daemons read their own configs,
the clients get `ssh` through a wrapper first on PATH that passes `-F <our ssh_config>` (pdsh,
DeepSpeed's runner and mpirun all call `ssh` by name). The only change outside the folder is the
privilege-separation directory /run/sshd, created when missing and removed again.

The second host's sshd runs in a mount namespace of its own with a tmpfs over `node_local`, so a
folder there is node-local: what one host writes, the other does not see (a cluster's /tmp).
"""
from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

SSHD = "/usr/sbin/sshd"
ADDRESSES = ("127.0.0.1", "127.0.0.2")
PRIVSEP = Path("/run/sshd")


def missing_tools() -> str:
    """Why two loopback hosts cannot be made here ('' when they can)."""
    missing = [name for name, path in (("openssh-server", SSHD), ("pdsh", shutil.which("pdsh"))) if
               not path or not Path(path).exists()]
    if missing:
        return (f"{' and '.join(missing)} not installed (./run.sh test installs them with apt-get when run as "
                "root)")
    if os.geteuid() != 0:
        return "the loopback sshd logs in as root by key: run the tests as root"
    return ""


def _port_free_on_both() -> int:
    for _ in range(50):
        with socket.socket() as probe:
            probe.bind((ADDRESSES[0], 0))
            port = probe.getsockname()[1]
        try:
            with socket.socket() as other:
                other.bind((ADDRESSES[1], port))
            return port
        except OSError:
            continue
    raise RuntimeError("no port free on both loopback addresses")


@dataclass
class LoopbackHosts:
    root: Path
    port: int = 0
    node_local: Path = field(init=False)
    bin: Path = field(init=False)
    daemons: list = field(default_factory=list)
    node_local_isolated: bool = False
    made_privsep: bool = False

    def __post_init__(self):
        self.node_local = self.root / "node-local"
        self.bin = self.root / "bin"

    @property
    def hosts(self) -> tuple[str, ...]:
        return ADDRESSES

    def hostfile(self, slots: int = 1, hosts: tuple[str, ...] = ADDRESSES) -> Path:
        path = self.root / f"hostfile-{len(hosts)}x{slots}"
        path.write_text("".join(f"{host} slots={slots}\n" for host in hosts))
        return path

    def env(self, base: dict) -> dict:
        """`base` with our ssh first on PATH."""
        return {**base, "PATH": f"{self.bin}{os.pathsep}{base.get('PATH', '')}"}

    def ssh(self, host: str, command: str, timeout: float = 30) -> subprocess.CompletedProcess:
        return subprocess.run([str(self.bin / "ssh"), host, command], capture_output=True, text=True,
                              timeout=timeout)

    # ------------------------------------------------------------------ set-up
    def start(self) -> LoopbackHosts:
        self.root.mkdir(parents=True, exist_ok=True)
        self.node_local.mkdir(exist_ok=True)
        self.bin.mkdir(exist_ok=True)
        for key in ("host_key", "client_key"):
            subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(self.root / key)], check=True)
        shutil.copyfile(self.root / "client_key.pub", self.root / "authorized_keys")
        self.port = _port_free_on_both()
        (self.root / "ssh_config").write_text(
            f"Host {' '.join(ADDRESSES)}\n  Port {self.port}\n  User root\n  IdentityFile {self.root / 'client_key'}\n"
            "  IdentitiesOnly yes\n  StrictHostKeyChecking no\n  UserKnownHostsFile /dev/null\n  LogLevel ERROR\n"
            "  BatchMode yes\n  ConnectTimeout 10\n")
        wrapper = self.bin / "ssh"
        wrapper.write_text(f"#!/bin/sh\nexec /usr/bin/ssh -F {self.root / 'ssh_config'} \"$@\"\n")
        wrapper.chmod(0o755)
        if not PRIVSEP.is_dir():
            PRIVSEP.mkdir(mode=0o755, parents=True)
            self.made_privsep = True
        for index, address in enumerate(ADDRESSES):
            config = self.root / f"sshd_config_{index}"
            config.write_text(
                f"ListenAddress {address}:{self.port}\nHostKey {self.root / 'host_key'}\n"
                f"AuthorizedKeysFile {self.root / 'authorized_keys'}\nPermitRootLogin prohibit-password\n"
                "PasswordAuthentication no\nKbdInteractiveAuthentication no\nUsePAM no\nStrictModes no\n"
                f"PidFile {self.root / f'sshd_{index}.pid'}\nMaxStartups 100\nMaxSessions 100\n")
            daemon = [SSHD, "-D", "-f", str(config), "-E", str(self.root / f"sshd_{index}.log")]
            if index == 1:
                daemon = self._in_own_mount_namespace(daemon)
            self.daemons.append(subprocess.Popen(daemon, start_new_session=True))
        self._wait_until_reachable()
        return self

    def _in_own_mount_namespace(self, daemon: list[str]) -> list[str]:
        probe = subprocess.run(["unshare", "--mount", "--propagation", "private", "true"], capture_output=True)
        if probe.returncode != 0:
            return daemon  # node-local folders cannot be made; the tests that need them skip
        self.node_local_isolated = True
        return ["unshare", "--mount", "--propagation", "private", "sh", "-c",
                f"mount -t tmpfs tmpfs {self.node_local} && exec " + " ".join(daemon)]

    def _wait_until_reachable(self, seconds: float = 20) -> None:
        deadline = time.monotonic() + seconds
        for host in ADDRESSES:
            while True:
                if self.ssh(host, "true", timeout=10).returncode == 0:
                    break
                if time.monotonic() > deadline:
                    logs = "".join(p.read_text() for p in self.root.glob("sshd_*.log"))
                    raise RuntimeError(f"the loopback sshd on {host}:{self.port} did not answer: {logs[-2000:]}")
                time.sleep(0.2)

    def stop(self) -> None:
        for daemon in self.daemons:
            try:
                os.killpg(daemon.pid, signal.SIGTERM)
            except ProcessLookupError:
                pass
            daemon.wait(timeout=10)
        self.daemons.clear()
        if self.made_privsep:
            shutil.rmtree(PRIVSEP, ignore_errors=True)


def venv_env() -> dict:
    """The environment the tests launch jobs with: the virtual environment first on PATH."""
    bin_dir = str(Path(sys.executable).parent)
    return {**os.environ, "PATH": f"{bin_dir}{os.pathsep}{os.environ.get('PATH', '')}"}
