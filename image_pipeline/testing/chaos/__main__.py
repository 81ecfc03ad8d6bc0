"""``python -m image_pipeline.testing.chaos``: the chaos harness's command line (``make chaos``).

The package's ``cli.main`` does the work; this file only runs it and hands its exit code to the shell.
"""

from __future__ import annotations

import sys

from image_pipeline.testing.chaos.cli import main

sys.exit(main())
