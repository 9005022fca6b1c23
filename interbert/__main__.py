"""`python -m interbert ...`: the `interbert` command."""
import sys

from interbert.cli import main

sys.exit(main())
