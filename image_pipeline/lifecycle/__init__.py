"""The exactly-once protocol of one prompt, apart from Dagster's wiring: claim -> intent -> receipt -> log ->
remove, each step guarded by the ledger (``ledger.py``), and the only code that decides a prompt's next step
(``approval.py``, ``suspects.py``, ``claims.py``). The assets in ``defs/assets.py`` call these."""
