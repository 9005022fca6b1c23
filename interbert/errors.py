"""The one hierarchy of a user's mistakes: a flag, a file, a config or data that cannot be used.

Every error class the project raises for such a mistake derives from ``UserError`` (and keeps
the builtin base its callers may catch, e.g. ``ValueError``). Each command catches ``UserError``
once, prints its message as one line naming the file, key or flag and what to do, and exits with
``EXIT_USAGE``; anything else is a bug and keeps its traceback.
"""

import sys

EXIT_USAGE = 2


class UserError(Exception):
    """A mistake in what the user gave; the message says where and what to do."""


class UsageError(UserError, ValueError):
    """Flags that do not fit together, found before any work starts."""


def run_reporting_user_errors(run, args, prog: str) -> int:
    """``run(args)``; a ``UserError`` (or a missing file) is one line ``PROG: error: ...`` on
    stderr and ``EXIT_USAGE``."""
    try:
        return run(args)
    except (UserError, FileNotFoundError) as error:
        print(f"{prog}: error: {error}", file=sys.stderr, flush=True)
        return EXIT_USAGE
