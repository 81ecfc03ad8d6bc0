"""Loopback emulator of ComfyUI's HTTP API, faithful on the wire (ComfyUI v0.3.68 ``server.py``,
``execution.py``, ``main.py``): POST/GET ``/prompt`` with ComfyUI's validation and error records, the
queue with one worker (strictly one job at a time, FIFO), ``/interrupt``, ``/history/{id}`` (``{}`` until
done), ``/view``, ``/system_stats``, ``/object_info``, ``/models``; all also under ``/api/``.

Start it with ``ComfyUIEmulator(seconds_per_job=1.0).start()`` (``.base_url``, ``.stop()``; also a
context manager). The modules, each importing only those before it: ``nodes`` (node specs, object_info,
the evaluator), ``validate`` (validate_prompt), ``worker`` (queue, worker, history, cache, images),
``server`` (the routes).
"""

from image_pipeline.testing.emulators.comfyui.nodes import OOM_TIPS
from image_pipeline.testing.emulators.comfyui.server import DEFAULT_FILES, VERSION, ComfyUIEmulator

__all__ = ["DEFAULT_FILES", "OOM_TIPS", "VERSION", "ComfyUIEmulator"]
