"""``python -m sidecar.replay ...``: the replay command without the rest of the CLI."""

import sys

from sidecar.replay.cli import main

sys.exit(main())
