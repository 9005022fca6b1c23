"""Running a job over several hosts: what each host's environment needs (`environment`, written by
`interbert cluster-env`: `commands`), and the checks of a hostfile before DeepSpeed's launcher is
started (`launch`: `interbert launch`). Nothing here runs inside a training rank; the ranks' own
checks are in interbert/training (hosts, shared_folder)."""
