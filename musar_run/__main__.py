"""``python -m musar_run WORKFLOW [options]``: see ``musar_run.cli``."""

import sys

from .cli import main

sys.exit(main())
