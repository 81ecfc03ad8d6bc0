"""Loopback emulator of the AUTOMATIC1111 / Forge / SD.Next web API (``/sdapi/v1``), faithful on the wire.

One job at a time behind a FIFO lock (others wait inside their open request), ``/progress`` and a global
``/interrupt``, the checkpoint list and the silent drop of an unknown ``sd_model_checkpoint``, optional
Basic auth (``--api-auth``), the API switched off (no ``--api``), SD.Next's empty answer without a model,
and the error bodies of ``api_middleware.handle_exception`` and FastAPI's 422.

Start it::

    emulator = A1111Emulator(generation_s=1.0, api_auth="user:secret").start()
    ...  # A1111Generator(base_url=emulator.base_url, user="user", password="secret")
    emulator.stop()

The modules, each importing only those before it: ``wire`` (checkpoint names, error bodies, request
readers), ``state`` (knobs, FIFO lock, job state, counters), ``jobs`` (txt2img), ``server`` (routing,
login, faults). This module is the package's interface.
"""

from image_pipeline.testing.emulators.a1111.server import NAMED_FAULTS, A1111Emulator
from image_pipeline.testing.emulators.a1111.state import DEFAULT_CHECKPOINTS, FifoLock
from image_pipeline.testing.emulators.a1111.wire import OOM_TEXT, Checkpoint, closest_match

__all__ = [
    "DEFAULT_CHECKPOINTS",
    "NAMED_FAULTS",
    "OOM_TEXT",
    "A1111Emulator",
    "Checkpoint",
    "FifoLock",
    "closest_match",
]
