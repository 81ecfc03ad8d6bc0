"""The exactly-once protocol of one prompt, apart from Dagster's wiring: claim -> intent -> receipt -> log ->
remove, each step guarded by the ledger (``ledger.py``), and the only code that decides a prompt's next step:
``intake.py`` (a batch's rows claimed and planned), ``batch.py`` and ``generation.py`` (its images),
``posting.py`` (its post), ``done_log.py`` and ``done.py`` (its Done row and the queue row's removal). The
assets in ``defs/assets/`` call these, one call per step."""
