"""Asset values and images in a local folder or an object store: the partition store and write-once files."""

from image_pipeline.services.storage.objects import (
    WriteConflict,
    as_path,
    digest,
    is_object_store,
    read_file,
    use_s3_endpoint,
    write_once,
)
from image_pipeline.services.storage.partitions import PartitionFileStore

__all__ = [
    "PartitionFileStore",
    "WriteConflict",
    "as_path",
    "digest",
    "is_object_store",
    "read_file",
    "use_s3_endpoint",
    "write_once",
]
