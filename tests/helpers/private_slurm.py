"""A one-node SLURM cluster of this machine, started for a test and gone after it.

`PrivateSlurm(root).start()` writes a munge key and slurm.conf under `root` (a folder of its own,
mode 0755: munged wants its socket's folder open to all), starts munged, slurmctld and slurmd in
the foreground as child processes, every path (socket, state, spool, pid and log files) under
`root`, the daemons on free ports of 127.0.0.1, and waits until the node is idle. `env()` is what a
client (sbatch, squeue, scontrol) needs: SLURM_CONF pointing at that slurm.conf. `stop()` cancels
the jobs, ends the processes this cluster started (found by their SLURM_CONF), then the daemons.
`SlurmUnavailable` says why the cluster could not start (the daemons' log lines), for a skip.
"""
from __future__ import annotations

import os
import signal
import socket
import subprocess
import time
from pathlib import Path

PROGRAMS = ("munged", "mungekey", "slurmctld", "slurmd", "sbatch", "squeue", "scontrol", "scancel", "sinfo")


class SlurmUnavailable(RuntimeError):
    """SLURM cannot run here; the message says why."""


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def port_is_free(port: int) -> bool:
    with socket.socket() as probe:
        try:
            probe.bind(("127.0.0.1", port))
        except OSError:
            return False
        return True


class PrivateSlurm:
    def __init__(self, root: Path, *, cpus: int, first_job_id: int = 1, cred_expire: int = 5):
        self.root, self.cpus, self.first_job_id, self.cred_expire = Path(root), cpus, first_job_id, cred_expire
        self.node = socket.gethostname().split(".")[0]
        self.conf = self.root / "slurm.conf"
        self.logs = self.root / "log"
        self.munge_socket = self.root / "munge" / "run" / "munge.sock"
        self.processes: dict[str, subprocess.Popen] = {}

    # ------------------------------------------------------------------ set-up
    def env(self, base: dict | None = None) -> dict:
        env = dict(os.environ if base is None else base)
        env["SLURM_CONF"] = str(self.conf)
        return env

    def start(self, timeout: float = 30) -> PrivateSlurm:
        self._start_munge()
        self._write_conf()
        command = ["slurmctld", "-D", "-f", str(self.conf)]
        self._spawn("slurmctld", command)
        self._spawn("slurmd", ["slurmd", "-D", "-f", str(self.conf), "-N", self.node])
        self._wait_for_idle_node(timeout)
        return self

    def _start_munge(self) -> None:
        key_dir, run_dir = self.root / "munge" / "key", self.munge_socket.parent
        key_dir.mkdir(parents=True)
        run_dir.mkdir(parents=True)
        os.chmod(key_dir, 0o700)
        os.chmod(run_dir.parent, 0o755)
        os.chmod(run_dir, 0o755)
        key = key_dir / "munge.key"
        self._run(["mungekey", "--create", f"--keyfile={key}"], "mungekey")
        os.chmod(key, 0o600)
        self._spawn("munged", ["munged", "--foreground", f"--key-file={key}", f"--socket={self.munge_socket}",
                               f"--pid-file={run_dir / 'munged.pid'}", f"--log-file={self.logs / 'munged.log'}",
                               f"--seed-file={key_dir / 'munged.seed'}"])
        self._wait(lambda: self.munge_socket.exists(), 10, "munged did not create its socket")

    def _write_conf(self) -> None:
        for name in ("state", "spool"):
            (self.root / name).mkdir()
        (self.root / "plugstack.conf").write_text("")
        ctld_port, slurmd_port = free_port(), free_port()
        lines = [
            "ClusterName=interbert-test",
            f"SlurmctldHost={self.node}(127.0.0.1)",
            f"SlurmctldPort={ctld_port}",
            f"SlurmdPort={slurmd_port}",
            "SlurmUser=root",
            "SlurmdUser=root",
            "AuthType=auth/munge",
            "CredType=cred/munge",
            # cred_expire: a requeued job waits this long (+1 s) before it may start again (default 120 s)
            f"AuthInfo=socket={self.munge_socket},cred_expire={self.cred_expire}",
            "CommunicationParameters=NoInAddrAny,NoCtldInAddrAny",
            f"StateSaveLocation={self.root / 'state'}",
            f"SlurmdSpoolDir={self.root / 'spool'}",
            f"SlurmctldPidFile={self.root / 'slurmctld.pid'}",
            f"SlurmdPidFile={self.root / 'slurmd.pid'}",
            f"SlurmctldLogFile={self.logs / 'slurmctld.log'}",
            f"SlurmdLogFile={self.logs / 'slurmd.log'}",
            f"PlugStackConfig={self.root / 'plugstack.conf'}",
            "SlurmctldDebug=info",
            "SlurmdDebug=info",
            "MailProg=/bin/true",
            "ProctrackType=proctrack/linuxproc",
            "TaskPlugin=task/none",
            "JobAcctGatherType=jobacct_gather/none",
            "AccountingStorageType=accounting_storage/none",
            "MpiDefault=none",
            "SwitchType=switch/none",
            "SchedulerType=sched/builtin",
            "SchedulerParameters=sched_interval=1",
            "SelectType=select/cons_tres",
            "SelectTypeParameters=CR_CPU",
            "SlurmdParameters=config_overrides",
            "ReturnToService=2",
            "JobRequeue=1",
            "PreemptType=preempt/none",
            f"FirstJobId={self.first_job_id}",
            "MinJobAge=300",
            "KillWait=30",
            f"NodeName={self.node} NodeAddr=127.0.0.1 CPUs={self.cpus} State=UNKNOWN",
            f"PartitionName=test Nodes={self.node} Default=YES MaxTime=INFINITE State=UP",
        ]
        self.conf.write_text("\n".join(lines) + "\n")

    def _spawn(self, name: str, command: list[str]) -> None:
        self.logs.mkdir(exist_ok=True)
        with open(self.logs / f"{name}.out", "ab") as out:
            self.processes[name] = subprocess.Popen(command, env=self.env(), stdout=out, stderr=subprocess.STDOUT,
                                                    stdin=subprocess.DEVNULL, start_new_session=True)

    def _run(self, command: list[str], what: str) -> str:
        result = subprocess.run(command, env=self.env(), capture_output=True, text=True, timeout=30)
        if result.returncode != 0:
            raise SlurmUnavailable(f"{what} failed (exit {result.returncode}): {result.stderr.strip()[-500:]}")
        return result.stdout

    def _wait_for_idle_node(self, timeout: float) -> None:
        def idle() -> bool:
            for name, process in self.processes.items():
                if process.poll() is not None:
                    raise SlurmUnavailable(f"{name} exited with status {process.returncode}: {self.log_tail(name)}")
            result = subprocess.run(["sinfo", "-h", "-o", "%t"], env=self.env(), capture_output=True, text=True)
            return result.returncode == 0 and result.stdout.strip() == "idle"

        self._wait(idle, timeout, "the node did not become idle")

    def _wait(self, ready, timeout: float, what: str) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if ready():
                return
            time.sleep(0.3)
        raise SlurmUnavailable(f"{what} within {timeout:.0f} s; " + " | ".join(
            f"{name}: {self.log_tail(name)}" for name in self.processes))

    def log_tail(self, name: str, lines: int = 5) -> str:
        """The daemon's last log lines, its errors first (munged.log / slurmctld.log / slurmd.log)."""
        texts = [path.read_text(errors="replace") for path in (self.logs / f"{name}.log", self.logs / f"{name}.out")
                 if path.is_file()]
        found = [line for line in "\n".join(texts).splitlines() if line.strip()]
        errors = [line for line in found if "error" in line.lower() and "pmix" not in line.lower()]
        return " / ".join((errors or found)[-lines:]) or "(no log)"

    # ------------------------------------------------------------------ clients
    def sbatch(self, script: Path, options: list[str], arguments: list[str], *, env: dict, cwd: Path) -> int:
        """`sbatch OPTIONS SCRIPT ARGUMENTS` from `cwd` with `env` (plus SLURM_CONF); the job id."""
        result = subprocess.run(["sbatch", "--parsable", *options, str(script), *arguments], env=self.env(env),
                                cwd=cwd, capture_output=True, text=True, timeout=30)
        assert result.returncode == 0, f"sbatch failed: {result.stderr}"
        return int(result.stdout.strip().split(";")[0])

    def job(self, job_id: int) -> dict[str, str]:
        """`scontrol show job` as a dict (JobState, Restarts, ExitCode, ...)."""
        text = self._run(["scontrol", "show", "job", "-o", str(job_id)], "scontrol show job")
        return dict(field.split("=", 1) for field in text.split() if "=" in field)

    def client(self, *command: str) -> str:
        return self._run(list(command), command[0])

    # ------------------------------------------------------------------ tear-down
    def stop(self) -> None:
        if "slurmctld" in self.processes:
            subprocess.run(["scancel", "--user", str(os.getuid())], env=self.env(), capture_output=True, timeout=30)
            self._wait_quietly(lambda: not self.client("squeue", "-h", "-t", "running,completing").strip(), 10)
        self._kill_job_processes()
        if "slurmctld" in self.processes:  # both daemons leave at once (SIGTERM keeps slurmctld ~10 s)
            subprocess.run(["scontrol", "shutdown"], env=self.env(), capture_output=True, timeout=30)
        for name in ("slurmd", "slurmctld", "munged"):
            process = self.processes.get(name)
            if process is None:
                continue
            if process.poll() is None:
                process.terminate()
            try:
                process.wait(2)  # munged can linger 5 s and more after a job's credentials
            except subprocess.TimeoutExpired:
                os.killpg(process.pid, signal.SIGKILL)  # the daemon's own session: it and its helpers
                process.wait()

    def _wait_quietly(self, ready, timeout: float) -> None:
        try:
            self._wait(ready, timeout, "")
        except (SlurmUnavailable, subprocess.SubprocessError):
            pass

    def _kill_job_processes(self) -> None:
        """Whatever still runs with this cluster's SLURM_CONF (slurmstepd, the job's ranks), by pid."""
        marker = f"SLURM_CONF={self.conf}".encode()
        ours = {process.pid for process in self.processes.values()}
        for entry in Path("/proc").iterdir():
            if not entry.name.isdigit() or int(entry.name) in ours or int(entry.name) == os.getpid():
                continue
            try:
                if marker in (entry / "environ").read_bytes().split(b"\0"):
                    os.kill(int(entry.name), signal.SIGKILL)
            except (OSError, ProcessLookupError):
                pass
