"""One txt2img job, as ``Api.text2imgapi`` and ``processing.process_images`` run it: validate the body,
take the FIFO queue lock (a request waits inside its open HTTP request, there is no queue-full answer),
resolve ``override_settings.sd_model_checkpoint`` (an unknown name is dropped silently and the loaded
model is used), pick the seed (-1 -> ``random.randrange(4294967294)``), "sample" for ``generation_s``
unless interrupted (an interrupted job still answers 200 with an image), and answer
``{"images": [b64 PNG], "parameters": <the request echoed>, "info": <JSON string>}``."""

from __future__ import annotations

import base64
import io
import json
import random
import time
from typing import Any

from PIL import Image, PngImagePlugin

from image_pipeline.testing.emulators.a1111.state import A1111State
from image_pipeline.testing.emulators.a1111.wire import (
    VERSION,
    Checkpoint,
    closest_match,
    json_body,
    validation_errors,
)
from image_pipeline.testing.emulators.base import Request, Response
from image_pipeline.testing.emulators.huggingface.render import render_image

# A1111 1.10 defaults of StableDiffusionProcessingTxt2Img (shared/selfhosted-backends.md table)
DEFAULTS: dict[str, Any] = {
    "prompt": "",
    "negative_prompt": "",
    "seed": -1,
    "subseed": -1,
    "subseed_strength": 0,
    "width": 512,
    "height": 512,
    "steps": 50,
    "cfg_scale": 7.0,
    "sampler_name": None,
    "scheduler": None,
    "batch_size": 1,
    "n_iter": 1,
    "override_settings": {},
    "override_settings_restore_afterwards": True,
    "send_images": True,
    "save_images": False,
}
_TICK_S = 0.01  # how often a running job looks at the interrupt flag


class A1111Jobs(A1111State):
    def _txt2img(self, request: Request) -> Response:
        body, problem = json_body(request)
        if problem is not None:
            return problem
        errors = validation_errors(body)
        if errors:
            return Response.json({"detail": errors}, 422)
        with self._lock:
            self.txt2img_bodies.append(body)
        params = {**DEFAULTS, **body}
        with self.queue_lock:
            return self._run(params)

    def _run(self, params: dict[str, Any]) -> Response:
        asked = (params.get("override_settings") or {}).get("sd_model_checkpoint")
        model = self.loaded
        if asked is not None:
            found = closest_match(self.checkpoints, str(asked))
            model = found or model  # an unknown name is dropped: the loaded model makes the image
            if found is not None and not _truthy(params.get("override_settings_restore_afterwards")):
                self.loaded = found
        width, height = int(float(params["width"])), int(float(params["height"]))
        steps = int(float(params["steps"]))
        count = max(1, int(float(params["batch_size"]))) * max(1, int(float(params["n_iter"])))
        seed = int(float(params["seed"])) if params.get("seed") is not None else -1
        if seed == -1:
            seed = random.randrange(4294967294)
        self._begin(steps)
        interrupted = False
        try:
            interrupted = self._sample(steps)
            if model is None:
                # SD.Next's process_images returns None without a model: 200, no image, no info
                self._record(params, asked, None, seed, interrupted, 0)
                return Response.json({"images": [], "parameters": body_echo(params), "info": ""})
            seeds = [seed + i for i in range(count)]
            # the latent is width//8 x height//8: the decoded image is rounded down to a multiple of 8
            size = (max(8, width - width % 8), max(8, height - height % 8))
            infotexts = [self._infotext(params, s, size, model) for s in seeds]
            images = [
                self._png(str(params["prompt"]), s, size, text)
                for s, text in zip(seeds, infotexts, strict=True)
            ]
            info = self._info(params, seeds, size, model, infotexts)
            self._record(params, asked, model, seed, interrupted, count)
            return Response.json(
                {"images": images, "parameters": body_echo(params), "info": json.dumps(info)}
            )
        finally:
            self._end()

    def _sample(self, steps: int) -> bool:
        """Spend ``generation_s`` over the steps; True when an interrupt stopped it early."""
        deadline = time.monotonic() + self.generation_s
        while True:
            left = deadline - time.monotonic()
            if self._interrupted.is_set():
                with self._lock:
                    self.jobs_interrupted += 1
                return True
            if left <= 0:
                return False
            done = 1 - left / self.generation_s if self.generation_s > 0 else 1
            with self._lock:
                self.job_state["sampling_step"] = int(done * steps)
            self._interrupted.wait(min(_TICK_S, left))

    def _record(
        self,
        params: dict[str, Any],
        asked: Any,
        model: Checkpoint | None,
        seed: int,
        interrupted: bool,
        count: int,
    ) -> None:
        with self._lock:
            self.jobs.append(
                {
                    "prompt": params.get("prompt"),
                    "seed": seed,
                    "width": params.get("width"),
                    "height": params.get("height"),
                    "asked_checkpoint": asked,
                    "model": model.title if model else None,
                    "interrupted": interrupted,
                    "images": count,
                }
            )

    @staticmethod
    def _png(prompt: str, seed: int, size: tuple[int, int], infotext: str) -> str:
        raw = render_image(prompt, seed, size[0], size[1])
        with Image.open(io.BytesIO(raw)) as image:
            # the infotext rides in the PNG's "parameters" chunk, as encode_pil_to_base64 writes it
            meta = PngImagePlugin.PngInfo()
            meta.add_text("parameters", infotext)
            out = io.BytesIO()
            image.save(out, format="PNG", pnginfo=meta, compress_level=1)
        return base64.b64encode(out.getvalue()).decode("ascii")  # no "data:" prefix

    def _sampler(self, params: dict[str, Any]) -> str:
        # 1.10 replaces an unknown or missing sampler by its default instead of refusing it
        return str(params.get("sampler_name") or "DPM++ 2M")

    def _infotext(self, params: dict[str, Any], seed: int, size: tuple[int, int], model: Checkpoint) -> str:
        lines = [str(params["prompt"])]
        if params.get("negative_prompt"):
            lines.append(f"Negative prompt: {params['negative_prompt']}")
        lines.append(
            f"Steps: {params['steps']}, Sampler: {self._sampler(params)}, Schedule type: Karras, "
            f"CFG scale: {params['cfg_scale']}, Seed: {seed}, Size: {size[0]}x{size[1]}, "
            f"Model hash: {model.shorthash}, Model: {model.model_name}, Version: {VERSION}"
        )
        return "\n".join(lines)

    def _info(
        self,
        params: dict[str, Any],
        seeds: list[int],
        size: tuple[int, int],
        model: Checkpoint,
        texts: list[str],
    ) -> dict[str, Any]:
        """``Processed.js()``."""
        subseed = random.randrange(4294967294)
        return {
            "prompt": params["prompt"],
            "all_prompts": [params["prompt"]] * len(seeds),
            "negative_prompt": params["negative_prompt"],
            "all_negative_prompts": [params["negative_prompt"]] * len(seeds),
            "seed": seeds[0],
            "all_seeds": seeds,
            "subseed": subseed,
            "all_subseeds": [subseed + i for i in range(len(seeds))],
            "subseed_strength": params.get("subseed_strength", 0),
            "width": size[0],
            "height": size[1],
            "sampler_name": self._sampler(params),
            "cfg_scale": params["cfg_scale"],
            "steps": params["steps"],
            "batch_size": params["batch_size"],
            "restore_faces": False,
            "face_restoration_model": None,
            "sd_model_name": model.model_name,
            "sd_model_hash": model.shorthash,
            "sd_vae_name": None,
            "sd_vae_hash": None,
            "seed_resize_from_w": -1,
            "seed_resize_from_h": -1,
            "denoising_strength": None,
            "extra_generation_params": {"Schedule type": "Karras"},
            "index_of_first_image": 0,
            "infotexts": texts,
            "styles": [],
            "job_timestamp": time.strftime("%Y%m%d%H%M%S"),
            "clip_skip": 1,
            "is_using_inpainting_conditioning": False,
            "version": VERSION,
        }


def body_echo(params: dict[str, Any]) -> dict[str, Any]:
    """``parameters``: the request model echoed back; the seed stays as sent (-1 when -1 was sent)."""
    return dict(params)


def _truthy(value: Any) -> bool:
    return value if isinstance(value, bool) else str(value).lower() in ("1", "true", "yes", "on")
