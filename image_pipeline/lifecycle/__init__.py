"""The exactly-once protocol of one prompt, apart from Dagster's wiring: claim -> intent -> receipt -> log ->
remove, each step guarded by the ledger (``image_pipeline.ledger``). The assets in ``assets.py`` call these."""
