"""The A1111 wire, as data: the checkpoints a server lists, the error bodies it answers with, and the
readers of a request (Basic credentials, the txt2img body checked the way its pydantic model checks it).

Sources (AUTOMATIC1111/stable-diffusion-webui 1.10, ``modules/api/api.py``, ``api/models.py``,
``sd_models.py``; shared/selfhosted-backends.md section 1):
- every error that is not a validation error goes through ``api_middleware.handle_exception``:
  ``{"error": <exception class>, "detail": <HTTPException detail or "">, "body": "", "errors": str(e)}``
  with the exception's ``status_code`` or 500; A1111's pinned Starlette prints HTTP errors as "";
- that handler is registered for ``fastapi.exceptions.HTTPException``, which is what FastAPI's
  ``HTTPBasic`` raises ("Not authenticated") and what ``Api.auth`` raises ("Incorrect username or
  password"): a 401 has that shape too, without the ``WWW-Authenticate`` header (``JSONResponse`` drops it);
- a body that does not fit the model is FastAPI's own 422 ``{"detail": [{"loc", "msg", "type"}]}``
  (pydantic 1.10 on A1111; Forge's pydantic 2.8 adds ``input``); unknown keys are ignored;
- without ``--api`` no ``/sdapi`` route exists: the app's 404 ``{"detail": "Not Found"}``.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
from dataclasses import dataclass
from typing import Any

from image_pipeline.testing.emulators.base import Request, Response

VERSION = "v1.10.1"
OOM_TEXT = (
    "CUDA out of memory. Tried to allocate 2.50 GiB. GPU 0 has a total capacity of 8.00 GiB of which "
    "1.21 GiB is free. Of the allocated memory 5.92 GiB is allocated by PyTorch"
)
# What Cloudflare answers when the origin took longer than its 100 s (A1111 #9384): an HTML page.
CLOUDFLARE_524 = (
    b"<!DOCTYPE html><html><head><title>A timeout occurred | Cloudflare</title></head>"
    b"<body><h1>Error 524</h1><p>A timeout occurred</p></body></html>"
)


@dataclass(frozen=True)
class Checkpoint:
    """One installed checkpoint, named as ``CheckpointInfo`` names it."""

    name: str  # the file's path under models/Stable-diffusion, e.g. "sdxl/juggernaut.safetensors"

    @property
    def sha256(self) -> str:
        return hashlib.sha256(self.name.encode()).hexdigest()

    @property
    def shorthash(self) -> str:
        return self.sha256[:10]

    @property
    def legacy_hash(self) -> str:  # model_hash(): 8 hex digits of the old hashing
        return hashlib.sha256(b"legacy" + self.name.encode()).hexdigest()[:8]

    @property
    def model_name(self) -> str:
        return self.name.replace("/", "_").replace("\\", "_").rsplit(".", 1)[0]

    @property
    def stem(self) -> str:  # name_for_extra
        return self.name.rsplit("/", 1)[-1].rsplit(".", 1)[0]

    @property
    def title(self) -> str:
        return f"{self.name} [{self.shorthash}]"

    @property
    def ids(self) -> list[str]:
        """``CheckpointInfo.ids``: every alias the server resolves ``sd_model_checkpoint`` with."""
        return [
            self.legacy_hash,
            self.model_name,
            self.title,
            self.name,
            self.stem,
            f"{self.name} [{self.legacy_hash}]",
            self.shorthash,
            self.sha256,
            f"{self.stem} [{self.shorthash}]",
        ]

    def listing(self) -> dict[str, Any]:
        """One item of GET /sdapi/v1/sd-models (``Api.get_sd_models``)."""
        return {
            "title": self.title,
            "model_name": self.model_name,
            "hash": self.shorthash,
            "sha256": self.sha256,
            "filename": f"/home/user/stable-diffusion-webui/models/Stable-diffusion/{self.name}",
            "config": None,
        }


def closest_match(checkpoints: list[Checkpoint], wanted: str) -> Checkpoint | None:
    """``sd_models.get_closet_checkpoint_match``: an exact alias, else the shortest title containing it."""
    for checkpoint in checkpoints:
        if wanted in checkpoint.ids:
            return checkpoint
    found = sorted((c for c in checkpoints if wanted in c.title), key=lambda c: len(c.title))
    return found[0] if found else None


def handled_error(status: int, error: str, detail: str = "", errors: str = "") -> Response:
    """An answer of ``api_middleware.handle_exception``."""
    return Response.json({"error": error, "detail": detail, "body": "", "errors": errors}, status)


def not_found() -> Response:
    return Response.json({"detail": "Not Found"}, 404)


def credentials_of(request: Request) -> tuple[str, str] | None:
    """The Basic credentials sent, or None when there are none (or they do not decode)."""
    scheme, _, value = request.header("authorization").partition(" ")
    if scheme.lower() != "basic" or not value:
        return None
    try:
        user, _, password = base64.b64decode(value.strip()).decode("utf-8").partition(":")
    except (binascii.Error, UnicodeDecodeError):
        return None
    return user, password


# txt2img fields and their pydantic types (StableDiffusionProcessingTxt2Img, api/models.py); the others
# the emulator reads nothing from, and pydantic ignores unknown keys.
INT_FIELDS = (
    "seed", "subseed", "seed_resize_from_h", "seed_resize_from_w", "width", "height", "steps",
    "batch_size", "n_iter", "hr_second_pass_steps", "hr_resize_x", "hr_resize_y",
)  # fmt: skip
FLOAT_FIELDS = ("cfg_scale", "subseed_strength", "denoising_strength", "distilled_cfg_scale")
STR_FIELDS = ("prompt", "negative_prompt", "sampler_name", "sampler_index", "scheduler", "script_name")
BOOL_FIELDS = ("override_settings_restore_afterwards", "send_images", "save_images", "enable_hr")
DICT_FIELDS = ("override_settings", "alwayson_scripts")

_PYDANTIC_V1 = {
    "int": ("value is not a valid integer", "type_error.integer"),
    "float": ("value is not a valid float", "type_error.float"),
    "str": ("str type expected", "type_error.str"),
    "bool": ("value could not be parsed to a boolean", "type_error.bool"),
    "dict": ("value is not a valid dict", "type_error.dict"),
}


def _fits(kind: str, value: Any) -> bool:
    """Whether pydantic 1.10 (not strict) coerces ``value`` to ``kind``; None is fine (Optional)."""
    if value is None:
        return True
    if kind == "int":
        if isinstance(value, bool | int | float):
            return True
        try:
            int(str(value).strip())
            return True
        except ValueError:
            return False
    if kind == "float":
        try:
            float(value)
            return not isinstance(value, list | dict)
        except (TypeError, ValueError):
            return False
    if kind == "str":
        return isinstance(value, str | int | float) and not isinstance(value, bool)
    if kind == "bool":
        return isinstance(value, bool) or str(value).lower() in {
            "0",
            "1",
            "true",
            "false",
            "yes",
            "no",
            "on",
            "off",
        }
    return isinstance(value, dict)


def validation_errors(body: Any) -> list[dict[str, Any]]:
    """FastAPI's 422 items for a txt2img body, in pydantic 1.10's words."""
    if not isinstance(body, dict):
        return [{"loc": ["body"], "msg": "value is not a valid dict", "type": "type_error.dict"}]
    problems = []
    for kind, names in (
        ("int", INT_FIELDS),
        ("float", FLOAT_FIELDS),
        ("str", STR_FIELDS),
        ("bool", BOOL_FIELDS),
        ("dict", DICT_FIELDS),
    ):
        for name in names:
            if name in body and not _fits(kind, body[name]):
                msg, kind_type = _PYDANTIC_V1[kind]
                problems.append({"loc": ["body", name], "msg": msg, "type": kind_type})
    return problems


def json_body(request: Request) -> tuple[Any, Response | None]:
    """The decoded body, or FastAPI's 422 for a body that is not JSON."""
    try:
        return json.loads(request.body.decode("utf-8") or "null"), None
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        item = {
            "loc": ["body", getattr(exc, "pos", 0)],
            "msg": "Expecting value",
            "type": "value_error.jsondecode",
            "ctx": {
                "msg": "Expecting value",
                "doc": "",
                "pos": getattr(exc, "pos", 0),
                "lineno": 1,
                "colno": 1,
            },
        }
        return None, Response.json({"detail": [item]}, 422)
