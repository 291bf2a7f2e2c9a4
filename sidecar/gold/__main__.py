"""``python -m sidecar.gold run|capture ...``: the gold commands without the rest of the CLI."""

import sys

from sidecar.gold.cli import main

sys.exit(main())
