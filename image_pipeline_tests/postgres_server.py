"""A throwaway PostgreSQL server for tests: Debian's binaries, a temp cluster, 127.0.0.1 on a free port.

The server itself lives in ``image_pipeline/testing/servers.py``, so the chaos harness (which may not
import this test package) starts the same one; this module keeps the names the tests import.
"""

from __future__ import annotations

from image_pipeline.testing.servers import SERVICE_USER, PostgresServer, find_bin_dir, postgres_server

__all__ = ["SERVICE_USER", "PostgresServer", "find_bin_dir", "postgres_server"]
