"""Dagster's side, in the folder Dagster's own project layout gives it: the assets (thin: Dagster in, the
lifecycle's steps, Dagster out), jobs, schedule, sensor, partitions, batched run requests and the instance
storage. ``image_pipeline.definitions`` loads them."""
