"""A throwaway S3-compatible server for tests: moto's server mode on 127.0.0.1, a free port, in a thread.

The server itself lives in ``image_pipeline/testing/servers.py``, so the chaos harness (which may not import
this test package) starts the same one; this module keeps the names the tests import.
"""

from __future__ import annotations

from image_pipeline.testing.servers import S3Server, moto_s3

__all__ = ["S3Server", "moto_s3"]
