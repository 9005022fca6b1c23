"""Jobs of the several-hosts tests: DeepSpeed's real runner over the two loopback hosts (pdsh or
openmpi), the processes each host runs, and waiting for them."""
from __future__ import annotations

import subprocess
from pathlib import Path

from tests.helpers.ds_config import write_ds_config
from tests.helpers.train_log import read_train_log
from tests.helpers.training_runs import BIN, REPO, free_port, kill_job, pretrain_args, subprocess_env, wait_for

MASTER = "127.0.0.1"


def job_env(hosts, tmp_path: Path, port: int) -> dict:
    """The launching shell's environment, and DS_ENV_FILE pointing at what `interbert cluster-env`
    writes for it (PATH with the venv, the CPU accelerator, the socket interface, MASTER_*)."""
    env = hosts.env(subprocess_env())
    env_file = tmp_path / f"deepspeed_env_{port}"
    subprocess.run([str(BIN / "interbert"), "cluster-env", "--master-addr", MASTER, "--master-port", str(port),
                    "--write", str(env_file)], env=env, check=True, capture_output=True, cwd=REPO)
    return {**env, "DS_ENV_FILE": str(env_file)}


def start(hosts, tmp_path: Path, corpus: Path, output: Path, *extra: str, launcher: str = "pdsh",
          hostfile: Path | None = None, log_name: str = "job.log", entry: str = "deepspeed") -> subprocess.Popen:
    """`deepspeed --hostfile HOSTS --master_addr 127.0.0.1 interbert/pretrain.py ...` in a session of its own
    (entry "interbert": the same arguments to `interbert launch`, under the environment's own python)."""
    port = free_port()
    config = write_ds_config(tmp_path / "ds.json", micro=4)
    runner = ["--launcher", "openmpi", "--launcher_args=--allow-run-as-root --mca btl_tcp_if_include lo"] \
        if launcher == "openmpi" else []
    # DeepSpeed's pdsh runner, stopped by SIGTERM, runs `pkill -f "<its python> -u -m deepspeed.launcher.launch"`
    # on every host: every DeepSpeed job of that interpreter there, another test's too. The runner runs
    # under a name of the environment's python that is this job's alone (the environment is the same).
    arguments = ["--hostfile", str(hostfile or hosts.hostfile()), *runner, "--master_addr", MASTER,
                 "--master_port", str(port), *pretrain_args(corpus, config, output, *extra)]
    python = None
    if entry == "interbert":  # its runner narrows that kill command to this job (interbert/cluster/pdsh_kill.py)
        command = [str(BIN / "interbert"), "launch", *arguments]
    else:
        python = BIN / f"python-job-{port}"
        python.unlink(missing_ok=True)
        python.symlink_to("python3")
        command = [str(python), "-m", "deepspeed.launcher.runner", *arguments]
    log = open(tmp_path / log_name, "w")
    process = subprocess.Popen(command, cwd=REPO, env=job_env(hosts, tmp_path, port), stdout=log,
                               stderr=subprocess.STDOUT, start_new_session=True)
    process.log_path = tmp_path / log_name  # type: ignore[attr-defined]
    process.python_link = python  # type: ignore[attr-defined]
    log.close()
    return process


def run(hosts, tmp_path: Path, corpus: Path, output: Path, *extra: str, timeout: float = 240, **options):
    """A job to its end: (exit status, its console)."""
    process = start(hosts, tmp_path, corpus, output, *extra, **options)
    try:
        process.wait(timeout=timeout)
    finally:
        end_job(process, output)
    return process.returncode, process.log_path.read_text()


def processes(output: Path) -> dict[int, list[str]]:
    """pid -> command line of every process of the job writing to `output` (launchers and ranks)."""
    found = {}
    for entry in Path("/proc").glob("[0-9]*"):
        try:
            words = [w.decode(errors="replace") for w in (entry / "cmdline").read_bytes().split(b"\0")]
        except OSError:
            continue
        if str(output) in words and "interbert/pretrain.py" in words:
            found[int(entry.name)] = words
    return found


def parent(pid: int) -> int:
    return int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[1])


def rank_pid(output: Path, node_rank: int) -> int:
    """The rank process the per-node launcher of `node_rank` started (pdsh launches)."""
    for pid, words in processes(output).items():
        if words[1:3] == ["-u", "interbert/pretrain.py"]:
            launcher = Path(f"/proc/{parent(pid)}/cmdline").read_bytes().decode(errors="replace").split("\0")
            if "deepspeed.launcher.launch" in launcher and f"--node_rank={node_rank}" in launcher:
                return pid
    raise AssertionError(f"no rank of node {node_rank} runs: {processes(output)}")


def launcher_pid(output: Path, node_rank: int) -> int:
    return parent(rank_pid(output, node_rank))


def steps_logged(output: Path) -> int:
    try:
        return len(read_train_log(output))
    except (OSError, ValueError):
        return 0


def wait_for_steps(process, output: Path, count: int, seconds: float = 180) -> None:
    def reached() -> bool:
        if process.poll() is not None:
            raise AssertionError(f"the job ended early ({process.returncode}): {process.log_path.read_text()[-3000:]}")
        return steps_logged(output) >= count

    wait_for(reached, seconds, f"{count} steps")


def end_job(process, output: Path) -> None:
    """Nothing of the job left on either host (a test's clean-up, whatever happened)."""
    kill_job(process, processes(output))
    link = getattr(process, "python_link", None)
    if link is not None:
        link.unlink(missing_ok=True)


def rank_output(output: Path, job_log: str) -> str:
    """What the ranks printed: the job's console, then what went on in console/ after it closed."""
    diverted = "".join(path.read_text() for path in sorted((output / "console").glob("*.log"))) \
        if (output / "console").is_dir() else ""
    return job_log + diverted
