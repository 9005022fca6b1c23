"""DeepSpeed's pdsh runner, stopped by SIGTERM or Ctrl-C, runs `pkill -f "<python> -u -m
deepspeed.launcher.launch"` on every host of the job. That pattern matches the launcher of every
DeepSpeed job of the same Python on those hosts, so preempting one job stops the others that share
its hosts. `scope_pdsh_kill` narrows the runner's kill command to this job's own launchers: their
command line ends in this job's node rank, master address and master port (a port one job holds)."""
from __future__ import annotations

LAUNCH_MODULE = "deepspeed.launcher.launch"


def job_kill_command(command: list[str], kill_command: list[str]) -> list[str] | None:
    """The pdsh kill command for the launchers `command` starts (pdsh's `%n` stands for each host's
    node rank there as here); None when `command` is not DeepSpeed's pdsh launch as this expects it."""
    if LAUNCH_MODULE not in command or "pkill -f " not in kill_command:
        return None
    flags = command[command.index(LAUNCH_MODULE) + 1:]
    ranks = [index for index, flag in enumerate(flags) if flag.startswith("--node_rank=")]
    if not ranks:
        return None
    wanted = flags[ranks[0]:ranks[0] + 3]  # DeepSpeed writes them in this order, one after another
    prefixes = ("--node_rank=", "--master_addr=", "--master_port=")
    if len(wanted) != 3 or any(not flag.startswith(prefix) or " " in flag for flag, prefix in zip(wanted, prefixes)):
        return None
    pdsh = kill_command[:kill_command.index("pkill -f ")]
    return [*pdsh, "pkill", "-f", "--", "\\ ".join(wanted)]  # the remote shell reads "\ " as a space


def scope_pdsh_kill() -> bool:
    """Make DeepSpeed's PDSHRunner give a kill command of this job's launchers alone (in this
    process, before its runner runs). False, leaving DeepSpeed as it is, where its runner does not
    have the shape this relies on."""
    from deepspeed.launcher import multinode_runner

    runner = getattr(multinode_runner, "PDSHRunner", None)
    if runner is None or not hasattr(runner, "get_cmd"):
        return False
    original = runner.get_cmd

    def get_cmd(self, environment, active_resources):
        result = original(self, environment, active_resources)
        if not (isinstance(result, tuple) and len(result) == 3):
            return result
        command, kill_command, env = result
        scoped = job_kill_command(command, kill_command)
        return (command, kill_command if scoped is None else scoped, env)

    runner.get_cmd = get_cmd
    return True
