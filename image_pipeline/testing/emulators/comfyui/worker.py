"""The emulated ComfyUI's queue and its one worker thread (ComfyUI ``main.py`` ``prompt_worker`` and
``execution.PromptQueue``): a heap ordered by number, strictly one job at a time, history in memory in
the real shape, and the cache that makes an identical graph execute nothing and point at the previous
file. Runtime faults (a node exception, out of memory, an interrupt) land in history, never in HTTP.
"""

from __future__ import annotations

import copy
import hashlib
import heapq
import io
import json
import os
import threading
import time
from dataclasses import dataclass
from typing import Any

from PIL import Image, ImageDraw

from image_pipeline.testing.emulators.comfyui.nodes import OOM_TIPS, evaluate

# one planned runtime fault per executed job: ("exception", class or None) or ("oom", class or None)
JobFault = tuple[str, str | None]


@dataclass
class Job:
    number: float
    prompt_id: str
    prompt: dict[str, Any]
    extra_data: dict[str, Any]
    outputs: list[str]

    def item(self) -> list[Any]:
        return [self.number, self.prompt_id, self.prompt, self.extra_data, self.outputs]

    def __lt__(self, other: Job) -> bool:
        return self.number < other.number


def render_png(texts: list[str], seed: int, width: int, height: int) -> bytes:
    """A cheap, real PNG whose colours depend on the prompt and the seed."""
    digest = hashlib.sha256(f"{seed}:{'|'.join(texts)}".encode()).digest()
    image = Image.new("RGB", (width, height), tuple(digest[:3]))
    draw = ImageDraw.Draw(image)
    draw.rectangle((0, height // 2, width, height), fill=tuple(digest[3:6]))
    draw.ellipse((width // 4, height // 4, 3 * width // 4, 3 * height // 4), fill=tuple(digest[6:9]))
    buf = io.BytesIO()
    image.save(buf, format="PNG", compress_level=1)
    return buf.getvalue()


class Worker:
    def __init__(self, seconds_per_job: float = 0.05) -> None:
        self.seconds_per_job = seconds_per_job
        self.lock = threading.RLock()
        self.not_empty = threading.Condition(self.lock)
        self.queue: list[Job] = []
        self.running: dict[str, Job] = {}
        self.history: dict[str, dict[str, Any]] = {}
        self.files: dict[tuple[str, str, str], bytes] = {}  # (type, subfolder, filename) -> bytes
        self.job_faults: list[JobFault] = []
        self.jobs: list[dict[str, Any]] = []  # what each executed job's sampler and output saw
        self.jobs_executed = 0
        self.cached_hits = 0
        self.max_concurrent = 0
        self._active = 0
        self._counters: dict[tuple[str, str], int] = {}
        self._cache: dict[str, dict[str, Any]] = {}
        self._interrupt = threading.Event()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    # ------------------------------------------------------------------ lifecycle
    def start(self) -> None:
        self._thread = threading.Thread(target=self._loop, name="comfyui-prompt-worker", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._interrupt.set()
        with self.not_empty:
            self.not_empty.notify_all()
        if self._thread is not None:
            self._thread.join(timeout=5)

    # ------------------------------------------------------------------ the queue (PromptQueue)
    def put(self, job: Job) -> None:
        with self.not_empty:
            heapq.heappush(self.queue, job)
            self.not_empty.notify()

    def remaining(self) -> int:
        with self.lock:
            return len(self.queue) + len(self.running)

    def snapshot(self) -> tuple[list[list[Any]], list[list[Any]]]:
        with self.lock:
            return [j.item() for j in self.running.values()], [j.item() for j in self.queue]

    def delete(self, prompt_id: str) -> bool:
        with self.lock:
            for i, job in enumerate(self.queue):
                if job.prompt_id == prompt_id:
                    self.queue.pop(i)
                    heapq.heapify(self.queue)
                    return True
        return False

    def clear(self) -> None:
        with self.lock:
            self.queue = []

    def interrupt(self, prompt_id: str | None) -> bool:
        """server.py: with an id, only when that prompt runs; without one, whatever runs."""
        with self.lock:
            if prompt_id is not None and prompt_id not in self.running:
                return False
            self._interrupt.set()
            return True

    # ------------------------------------------------------------------ the worker
    def _loop(self) -> None:
        while not self._stop.is_set():
            with self.not_empty:
                while not self.queue and not self._stop.is_set():
                    self.not_empty.wait(0.2)
                if self._stop.is_set():
                    return
                job = heapq.heappop(self.queue)
                self.running[job.prompt_id] = job
                self._active += 1
                self.max_concurrent = max(self.max_concurrent, self._active)
            try:
                result = self._execute(job)
            except Exception as exc:  # an emulator bug still ends the job, as an execution error
                result = self._failed(job, "", "Exception", f"emulator error: {exc!r}", [])
            with self.lock:
                self._active -= 1
                self.running.pop(job.prompt_id, None)
                self.history[job.prompt_id] = {"prompt": job.item(), **result}

    def _execute(self, job: Job) -> dict[str, Any]:
        self._interrupt.clear()
        messages: list[list[Any]] = [["execution_start", _stamp({"prompt_id": job.prompt_id})]]
        key = hashlib.sha256(json.dumps(job.prompt, sort_keys=True).encode()).hexdigest()
        with self.lock:
            cached = self._cache.get(key)
        if cached is not None:
            with self.lock:
                self.cached_hits += 1
            messages.append(
                ["execution_cached", _stamp({"nodes": list(job.prompt), "prompt_id": job.prompt_id})]
            )
            messages.append(["execution_success", _stamp({"prompt_id": job.prompt_id})])
            return _entry(copy.deepcopy(cached), "success", messages, job)
        messages.append(["execution_cached", _stamp({"nodes": [], "prompt_id": job.prompt_id})])
        # the sampling time, in small steps so an interrupt stops it as ComfyUI's step callback does
        deadline = time.monotonic() + self.seconds_per_job
        while time.monotonic() < deadline:
            if self._interrupt.wait(min(0.01, max(0.0, deadline - time.monotonic()))):
                break
        sampler = next((n for n, v in job.prompt.items() if "Sampler" in v["class_type"]), job.outputs[0])
        if self._interrupt.is_set():
            data = {
                "prompt_id": job.prompt_id,
                "node_id": sampler,
                "node_type": job.prompt[sampler]["class_type"],
                "executed": [],
            }
            messages.append(["execution_interrupted", _stamp(data)])
            return _entry({}, "error", messages, job)
        with self.lock:
            fault = self.job_faults.pop(0) if self.job_faults else None
        if fault is not None:
            kind, cls = fault
            node = next((n for n, v in job.prompt.items() if v["class_type"] == cls), sampler)
            if kind == "oom":
                return self._failed(
                    job, node, "torch.OutOfMemoryError", f"Allocation on device \n{OOM_TIPS}", messages
                )
            message = "Error while deserializing header: HeaderTooLarge\n"
            return self._failed(job, node, "safetensors_rust.SafetensorError", message, messages)
        outputs: dict[str, Any] = {}
        memo: dict[str, tuple[Any, ...]] = {}
        for out in job.outputs:
            image = evaluate(job.prompt, str(job.prompt[out]["inputs"]["images"][0]), memo)[0]
            outputs[out] = {"images": self._save(job, out, image)}
        with self.lock:
            self.jobs_executed += 1
            self._cache[key] = outputs
        messages.append(["execution_success", _stamp({"prompt_id": job.prompt_id})])
        return _entry(copy.deepcopy(outputs), "success", messages, job)

    def _save(self, job: Job, node_id: str, image: dict[str, Any]) -> list[dict[str, Any]]:
        node = job.prompt[node_id]
        kind = "output" if node["class_type"] == "SaveImage" else "temp"
        prefix = str(node["inputs"].get("filename_prefix", "ComfyUI")) if kind == "output" else "ComfyUI_temp"
        subfolder, name = os.path.split(prefix)
        saved = []
        for _ in range(max(1, image["batch"])):
            png = render_png(image["positive"], image["seed"], image["width"], image["height"])
            with self.lock:
                counter = self._counters.get((subfolder, name), 0) + 1
                self._counters[(subfolder, name)] = counter
                filename = f"{name}_{counter:05}_.png"
                self.files[(kind, subfolder, filename)] = png
                self.jobs.append(
                    {
                        "prompt_id": job.prompt_id,
                        "client_id": job.extra_data.get("client_id"),
                        "filename": filename,
                        **image,
                    }
                )
            saved.append({"filename": filename, "subfolder": subfolder, "type": kind})
        return saved

    def _failed(
        self, job: Job, node: str, exc_type: str, message: str, messages: list[list[Any]]
    ) -> dict[str, Any]:
        data = {
            "prompt_id": job.prompt_id,
            "node_id": node,
            "node_type": job.prompt.get(node, {}).get("class_type", ""),
            "executed": [],
            "exception_message": message,
            "exception_type": exc_type,
            "traceback": ['  File "execution.py", line 496, in execute\n'],
            "current_inputs": {},
            "current_outputs": [],
        }
        messages.append(["execution_error", _stamp(data)])
        return _entry({}, "error", messages, job)


def _stamp(data: dict[str, Any]) -> dict[str, Any]:
    return {**data, "timestamp": int(time.time() * 1000)}


def _entry(outputs: dict[str, Any], status: str, messages: list[list[Any]], job: Job) -> dict[str, Any]:
    meta = {n: {"node_id": n, "display_node": n, "parent_node": None, "real_node_id": n} for n in outputs}
    return {
        "outputs": outputs,
        "status": {"status_str": status, "completed": status == "success", "messages": messages},
        "meta": meta,
    }
