"""How every ``interbert data`` command ends: the data path's own errors as one line and exit
status 2; SIGTERM and Ctrl-C as an interruption (exit status 130) that leaves nothing under the
output's name."""
from __future__ import annotations

import argparse
import signal
import sys

from interbert.errors import UserError

EXIT_INTERRUPTED = 130


def _interrupt(signum, frame) -> None:
    raise KeyboardInterrupt(signal.Signals(signum).name)


def guarded(func):
    """Turn the data path's own errors into a one-line message and exit status 2. SIGTERM (a
    scheduler's stop, ``kill``) interrupts like Ctrl-C: the store being written is removed (it
    was only ever under ``OUT.tmp-<pid>``), and the exit status is 130."""
    def run(args: argparse.Namespace) -> int:
        previous = signal.signal(signal.SIGTERM, _interrupt)
        try:
            return func(args)
        except (UserError, FileExistsError, FileNotFoundError, ValueError) as error:
            print(f"error: {error}", file=sys.stderr)
            return 2
        except KeyboardInterrupt as stop:
            out = getattr(args, "out", None)
            left = f"; nothing was written under {out}" if out else ""
            print(f"interrupted ({str(stop) or 'SIGINT'}){left}", file=sys.stderr)
            return EXIT_INTERRUPTED
        finally:
            signal.signal(signal.SIGTERM, previous)
    return run
