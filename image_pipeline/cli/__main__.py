"""`python -m image_pipeline.cli` runs the command line, as the `image-pipeline` script does."""

import sys

from image_pipeline.cli import main

sys.exit(main())
