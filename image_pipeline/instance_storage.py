"""Where dagster.yaml files written before the ``defs/`` layout point (``module:
image_pipeline.instance_storage``): a Dagster home keeps its copy of the instance config, so the old path
still loads. New configs name ``image_pipeline.defs.instance_storage``."""

from image_pipeline.defs.instance_storage import FastSqliteStorage

__all__ = ["FastSqliteStorage"]
