"""`python -m image_pipeline.cli` runs the command line, as the `image-pipeline` script does."""

from image_pipeline.cli import entry

entry()
