"""``python -m image_pipeline.testing.bench``: the benchmark's command line (``make bench``).

The package's ``cli.main`` does the work (also ``--baseline-one``, the baseline's worker process that
``run_baseline`` starts once per prompt); this file only runs it and hands its exit code to the shell.
"""

from __future__ import annotations

import sys

from image_pipeline.testing.bench.cli import main

sys.exit(main())
