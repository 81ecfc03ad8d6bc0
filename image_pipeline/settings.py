"""Which backend each external system uses, chosen from the environment once, when definitions load.

Secrets are bound with ``dg.EnvVar`` so the UI shows only the variable's name; everything else is a
plain resource field, so the UI shows the backends and settings in use.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import dagster as dg

from image_pipeline.defs.io_manager import PartitionFileIOManager
from image_pipeline.domain.rows import BACKEND_KINDS
from image_pipeline.domain.slots import MISSED_MODES
from image_pipeline.domain.statuses import PREVIEW
from image_pipeline.lifecycle.digest import DIGEST_MODES
from image_pipeline.lifecycle.ledger import PostLedger
from image_pipeline.lifecycle.refill import REFILL_STATUSES, RefillPlan
from image_pipeline.services.images.a1111 import A1111Generator
from image_pipeline.services.images.chain import BackendChain
from image_pipeline.services.images.comfyui import ComfyUIGenerator
from image_pipeline.services.images.huggingface import HuggingFaceGenerator
from image_pipeline.services.images.interface import DEFAULT_MODEL, ImageGenerator
from image_pipeline.services.images.preview import OfflinePreviewGenerator
from image_pipeline.services.publisher.interface import Publisher
from image_pipeline.services.publisher.outbox import LocalOutbox
from image_pipeline.services.publisher.telegram import TelegramPublisher
from image_pipeline.services.sheets import GoogleSheet, LocalWorkbook, PromptSheet
from image_pipeline.services.storage import is_object_store
from image_pipeline.services.text import DEFAULT_TEXT_MODEL, PromptWriter

DEFAULT_KEY_FILE = "chatbot_key.json"  # the ancestor's key file name


@dataclass(frozen=True)
class Settings:
    workbook: Path
    outbox: Path
    data: Path
    schedule_cron: str
    schedule_timezone: str
    prompts_per_tick: int
    instant: bool
    sensor_interval_s: int
    batch_size: int
    sheet_check_s: float = 60.0
    assets: str = ""  # the asset files' folder or object-store URL; "": <data>/assets
    slots: str = ""  # IMAGE_PIPELINE_SLOTS as given ("": no slots, the schedule and instant mode as before)
    slot_lead_s: float = 900.0
    missed_slot: str = "post"
    buttons: bool = False  # TELEGRAM_ADMIN_IDS with an alert chat: preview cards carry buttons
    digest: str = "weekly"  # IMAGE_PIPELINE_DIGEST: the weekly digest of the most-reacted posts, or off
    digest_at: str = "mon 09:00"
    digest_top: int = 5


def _get(env: Mapping[str, str], name: str, default: str = "") -> str:
    return (env.get(name) or "").strip() or default


def _flag(env: Mapping[str, str], name: str) -> bool:
    return _get(env, name).lower() in ("1", "true", "yes", "on")


def settings_from(env: Mapping[str, str]) -> Settings:
    location = _get(env, "IMAGE_PIPELINE_DATA", "data")
    # An object-store URL takes the images, previews and records; what stays local (the SQLite ledger,
    # pacing state, the local workbook and outbox) keeps the default folder.
    remote = is_object_store(location)
    data = Path("data" if remote else location).resolve()
    return Settings(
        workbook=Path(_get(env, "IMAGE_PIPELINE_WORKBOOK", str(data / "workbook"))).resolve(),
        outbox=Path(_get(env, "IMAGE_PIPELINE_OUTBOX", str(data / "outbox"))).resolve(),
        data=data,
        schedule_cron=_get(env, "IMAGE_PIPELINE_SCHEDULE_CRON", "0 7 * * *"),
        schedule_timezone=_get(env, "IMAGE_PIPELINE_SCHEDULE_TIMEZONE", "UTC"),
        prompts_per_tick=int(_get(env, "IMAGE_PIPELINE_PROMPTS_PER_TICK", "1")),
        instant=_flag(env, "IMAGE_PIPELINE_INSTANT"),
        sensor_interval_s=int(_get(env, "IMAGE_PIPELINE_SENSOR_INTERVAL_S", "60")),
        # prompts per run for `run`, the sensor and the schedule: a burst pays one run, one queue read,
        # one Done append and one removal per batch
        batch_size=max(1, int(_get(env, "IMAGE_PIPELINE_BATCH_SIZE", "200"))),
        # Drive's change token trails Sheets edits by minutes: the sensor also reads the queue's
        # prompt and status columns this often (one Sheets read); 0 leaves it to Drive's token
        sheet_check_s=max(0.0, float(_get(env, "IMAGE_PIPELINE_SHEET_CHECK_S", "60"))),
        assets=f"{location.rstrip('/')}/assets" if remote else str(data / "assets"),
        # posting at times of day (issue 16): the slots are parsed where the sensor is built
        slots=_get(env, "IMAGE_PIPELINE_SLOTS"),
        slot_lead_s=max(0.0, float(_get(env, "IMAGE_PIPELINE_SLOT_LEAD_S", "900"))),
        missed_slot=_missed_slot(_get(env, "IMAGE_PIPELINE_MISSED_SLOT", "post").lower()),
        buttons=all(_get(env, n) for n in ("TELEGRAM_ADMIN_IDS", "TELEGRAM_ALERT_CHAT_ID", "TELEGRAM_TOKEN")),
        digest=_digest(_get(env, "IMAGE_PIPELINE_DIGEST", "weekly").lower()),
        digest_at=_get(env, "IMAGE_PIPELINE_DIGEST_AT", "mon 09:00"),
        digest_top=max(1, int(_get(env, "IMAGE_PIPELINE_DIGEST_TOP", "5"))),
    )


def _digest(value: str) -> str:
    if value not in DIGEST_MODES:
        raise ValueError(f"IMAGE_PIPELINE_DIGEST must be one of {', '.join(DIGEST_MODES)}, got {value!r}")
    return value


def _missed_slot(value: str) -> str:
    if value not in MISSED_MODES:
        raise ValueError(
            f"IMAGE_PIPELINE_MISSED_SLOT must be one of {', '.join(MISSED_MODES)}, got {value!r}"
        )
    return value


def _retry_fields(env: Mapping[str, str]) -> dict[str, object]:
    """Optional overrides of every resource's retry settings (the chaos harness and impatient users)."""
    out: dict[str, object] = {}
    if _get(env, "IMAGE_PIPELINE_RETRY_ATTEMPTS"):
        out["retry_attempts"] = int(_get(env, "IMAGE_PIPELINE_RETRY_ATTEMPTS"))
    if _get(env, "IMAGE_PIPELINE_RETRY_BASE_DELAY_S"):
        out["retry_base_delay_s"] = float(_get(env, "IMAGE_PIPELINE_RETRY_BASE_DELAY_S"))
    return out


def _timeout(env: Mapping[str, str]) -> float | None:
    value = _get(env, "IMAGE_PIPELINE_HTTP_TIMEOUT_S")
    return float(value) if value else None


def prompt_sheet_from(env: Mapping[str, str], settings: Settings) -> PromptSheet:
    common: dict[str, object] = {
        "process_worksheet": _get(env, "GOOGLE_PROCESS_WORKSHEET", "Process"),
        "done_worksheet": _get(env, "GOOGLE_DONE_WORKSHEET", "Done"),
        **_retry_fields(env),
    }
    key_file = _get(env, "GOOGLE_SERVICE_ACCOUNT_FILE")
    has_json = bool(_get(env, "GOOGLE_SERVICE_ACCOUNT_JSON"))
    if not key_file and not has_json and Path(DEFAULT_KEY_FILE).is_file():
        key_file = str(Path(DEFAULT_KEY_FILE).resolve())
    if not key_file and not has_json:
        return LocalWorkbook(folder=str(settings.workbook), **common)  # type: ignore[arg-type]
    return GoogleSheet(
        service_account_file=key_file or None,
        service_account_json=dg.EnvVar("GOOGLE_SERVICE_ACCOUNT_JSON") if has_json else None,
        spreadsheet_key=_get(env, "GOOGLE_SHEET_KEY") or None,
        spreadsheet_title=_get(env, "GOOGLE_SHEET_TITLE", "Image Prompt"),
        sheets_api_base_url=_get(env, "GOOGLE_SHEETS_API_BASE_URL") or None,
        drive_api_base_url=_get(env, "GOOGLE_DRIVE_API_BASE_URL") or None,
        **({"timeout_s": _timeout(env)} if _timeout(env) else {}),
        **(
            {"quota_retry_s": float(_get(env, "GOOGLE_QUOTA_RETRY_S"))}
            if _get(env, "GOOGLE_QUOTA_RETRY_S")
            else {}
        ),
        **common,
    )


def image_generator_from(env: Mapping[str, str]) -> ImageGenerator:
    """IMAGE_BACKENDS when set (a fallback chain); else Hugging Face with a token or an endpoint URL, else
    the offline preview."""
    if _get(env, "IMAGE_BACKENDS"):
        return backend_chain_from(env)
    if not _get(env, "HF_TOKEN") and not _get(env, "HF_INFERENCE_BASE_URL"):
        return OfflinePreviewGenerator(**_retry_fields(env))
    return _huggingface(env, "")


def _huggingface(env: Mapping[str, str], where: str) -> HuggingFaceGenerator:
    """``where`` from IMAGE_BACKENDS (``huggingface:fal-ai`` or ``huggingface:https://...``) wins over
    HF_PROVIDER / HF_INFERENCE_BASE_URL."""
    is_url = where.startswith(("http://", "https://"))
    base_url = where if is_url else _get(env, "HF_INFERENCE_BASE_URL")
    return HuggingFaceGenerator(
        token=dg.EnvVar("HF_TOKEN") if _get(env, "HF_TOKEN") else None,
        model=_get(env, "HF_MODEL", DEFAULT_MODEL),
        provider=(where if where and not is_url else _get(env, "HF_PROVIDER", "auto")),
        base_url=base_url or None,
        hub_url=_get(env, "HF_ENDPOINT") or None,
        concurrency=int(_get(env, "HF_CONCURRENCY", "1")),
        **({"timeout_s": _timeout(env)} if _timeout(env) else {}),
        **_retry_fields(env),
    )


def _a1111(env: Mapping[str, str], where: str) -> A1111Generator:
    """AUTOMATIC1111 / Forge / SD.Next: ``a1111:http://gpu:7860`` in IMAGE_BACKENDS, else A1111_BASE_URL."""
    optional: dict[str, object] = {}
    for field, name, cast in (
        ("steps", "A1111_STEPS", int),
        ("cfg_scale", "A1111_CFG_SCALE", float),
        ("sampler_name", "A1111_SAMPLER", str),
        ("scheduler", "A1111_SCHEDULER", str),
        ("timeout_s", "A1111_TIMEOUT_S", float),
        ("concurrency", "A1111_CONCURRENCY", int),
    ):
        if _get(env, name):
            optional[field] = cast(_get(env, name))
    if _get(env, "A1111_RESTORE_SETTINGS"):
        optional["restore_settings"] = _flag(env, "A1111_RESTORE_SETTINGS")
    return A1111Generator(
        base_url=where or _get(env, "A1111_BASE_URL", "http://127.0.0.1:7860"),
        model=_get(env, "A1111_MODEL"),
        user=_get(env, "A1111_USER") or None,
        password=dg.EnvVar("A1111_PASSWORD") if _get(env, "A1111_PASSWORD") else None,
        **optional,  # type: ignore[arg-type]
        **_retry_fields(env),
    )


def _comfyui(env: Mapping[str, str], where: str) -> ComfyUIGenerator:
    """A ComfyUI server: ``comfyui:http://gpu:8188`` in IMAGE_BACKENDS, else COMFYUI_URL; the workflow is a
    path to an "Export (API)" file or a shipped one (``sdxl``, ``flux``)."""
    optional: dict[str, object] = {}
    for field, name, cast in (
        ("workflow", "COMFYUI_WORKFLOW", str),
        ("poll_interval_s", "COMFYUI_POLL_INTERVAL_S", float),
        ("timeout_s", "COMFYUI_TIMEOUT_S", float),
        ("request_timeout_s", "COMFYUI_REQUEST_TIMEOUT_S", float),
        ("concurrency", "COMFYUI_CONCURRENCY", int),
    ):
        if _get(env, name):
            optional[field] = cast(_get(env, name))
    return ComfyUIGenerator(
        base_url=where or _get(env, "COMFYUI_URL", "http://127.0.0.1:8188"),
        model=_get(env, "COMFYUI_MODEL"),
        **optional,  # type: ignore[arg-type]
        **_retry_fields(env),
    )


def parse_backends(value: str) -> list[tuple[str, str]]:
    """``huggingface:fal-ai, comfyui:http://gpu:8188, a1111`` -> [(kind, where), ...] in order; a kind at
    most once (its settings are its variables), only kinds a row's "backend" column may name too."""
    entries: list[tuple[str, str]] = []
    for raw in value.replace("\n", ",").split(","):
        raw = raw.strip()
        if not raw:
            continue
        kind, _, where = raw.partition(":")
        kind = kind.strip().lower()
        if kind not in BACKEND_KINDS:
            raise ValueError(f"IMAGE_BACKENDS: {kind!r} is not one of {', '.join(BACKEND_KINDS)}")
        if any(k == kind for k, _ in entries):
            raise ValueError(f"IMAGE_BACKENDS lists {kind} twice; each backend once, in the order to try")
        entries.append((kind, where.strip()))
    if not entries:
        raise ValueError("IMAGE_BACKENDS is set but lists no backend")
    return entries


def backend_chain_from(env: Mapping[str, str]) -> BackendChain:
    entries = parse_backends(_get(env, "IMAGE_BACKENDS"))
    members: dict[str, ImageGenerator] = {}
    for kind, where in entries:
        if kind == "huggingface":
            members[kind] = _huggingface(env, where)
        elif kind == "a1111":
            members[kind] = _a1111(env, where)
        elif kind == "comfyui":
            members[kind] = _comfyui(env, where)
        elif kind == "preview":
            members[kind] = OfflinePreviewGenerator(**_retry_fields(env))
    first = members[entries[0][0]]
    return BackendChain(
        order=[kind for kind, _ in entries],
        model=first.model,
        width=first.width,
        height=first.height,
        # enough generation threads for the widest backend: a fallback's slots are its own
        concurrency=max(m.concurrency for m in members.values()),
        **members,  # type: ignore[arg-type]
    )


def _content_policy(env: Mapping[str, str]) -> dict[str, str]:
    return {
        "banned_words": _get(env, "IMAGE_PIPELINE_BANNED_WORDS"),
        "banned_words_file": _get(env, "IMAGE_PIPELINE_BANNED_WORDS_FILE"),
        **_watermark(env),  # what is posted, like the banned words: every publisher takes it
        **_captions(env),  # type: ignore[dict-item]
    }


def _captions(env: Mapping[str, str]) -> dict[str, object]:
    """Caption template, signature, originals and silent posts: every publisher takes them."""
    return {
        "caption_template": _get(env, "CAPTION_TEMPLATE"),
        "caption_signature": _get(env, "CAPTION_SIGNATURE"),
        "caption_timezone": _get(env, "IMAGE_PIPELINE_SCHEDULE_TIMEZONE", "UTC"),  # the {date} field's
        "send_original": _get(env, "TELEGRAM_SEND_ORIGINAL", "off").lower(),
        "silent": _flag(env, "TELEGRAM_SILENT"),
    }


def _watermark(env: Mapping[str, str]) -> dict[str, str]:
    """The mark on posted images (WATERMARK_TEXT or WATERMARK_LOGO turns it on); unset fields keep the
    resource's defaults. Numbers stay text here: the resource's float fields parse them."""
    names = {
        "watermark_text": "WATERMARK_TEXT",
        "watermark_logo": "WATERMARK_LOGO",
        "watermark_corner": "WATERMARK_CORNER",
        "watermark_margin": "WATERMARK_MARGIN",
        "watermark_opacity": "WATERMARK_OPACITY",
        "watermark_size": "WATERMARK_SIZE",
    }
    return {field: _get(env, name) for field, name in names.items() if _get(env, name)}


def publisher_from(env: Mapping[str, str], settings: Settings) -> Publisher:
    if not (_get(env, "TELEGRAM_TOKEN") and _get(env, "TELEGRAM_CHAT_ID")):
        return LocalOutbox(folder=str(settings.outbox), **_retry_fields(env), **_content_policy(env))
    timeout = _timeout(env)
    return TelegramPublisher(
        token=dg.EnvVar("TELEGRAM_TOKEN"),
        chat_id=dg.EnvVar("TELEGRAM_CHAT_ID"),
        alert_chat_id=dg.EnvVar("TELEGRAM_ALERT_CHAT_ID") if _get(env, "TELEGRAM_ALERT_CHAT_ID") else None,
        api_base_url=_get(env, "TELEGRAM_API_BASE_URL", "https://api.telegram.org"),
        **({"read_timeout_s": timeout, "connect_timeout_s": timeout} if timeout else {}),
        posts_per_minute=float(_get(env, "TELEGRAM_POSTS_PER_MINUTE", "20")),
        pacing_state_path=str(settings.data / "telegram_pacing.json"),
        admin_ids=_get(env, "TELEGRAM_ADMIN_IDS"),
        **_retry_fields(env),
        **_content_policy(env),
    )


def resources_from(env: Mapping[str, str] | None = None) -> dict[str, object]:
    env = os.environ if env is None else env
    settings = settings_from(env)
    return {
        "prompt_sheet": prompt_sheet_from(env, settings),
        "image_generator": image_generator_from(env),
        "publisher": publisher_from(env, settings),
        "pipeline_io_manager": PartitionFileIOManager(
            base_dir=settings.assets or str(settings.data / "assets"),
            s3_endpoint_url=_get(env, "IMAGE_PIPELINE_S3_ENDPOINT_URL") or None,
        ),
        "ledger": PostLedger(
            path=str(settings.data / "ledger.sqlite"),
            url=dg.EnvVar("IMAGE_PIPELINE_LEDGER_URL") if _get(env, "IMAGE_PIPELINE_LEDGER_URL") else "",
            **(
                {"lease_s": float(_get(env, "IMAGE_PIPELINE_CLAIM_LEASE_S"))}
                if _get(env, "IMAGE_PIPELINE_CLAIM_LEASE_S")
                else {}
            ),
            **(
                {"max_attempts": int(_get(env, "IMAGE_PIPELINE_MAX_ATTEMPTS"))}
                if _get(env, "IMAGE_PIPELINE_MAX_ATTEMPTS")
                else {}
            ),
            daily_image_cap=int(_get(env, "IMAGE_PIPELINE_DAILY_IMAGE_CAP", "0") or 0),
            daily_post_cap=int(_get(env, "IMAGE_PIPELINE_DAILY_POST_CAP", "0") or 0),
        ),
        **({"prompt_writer": prompt_writer_from(env)} if refill_from(env)[1] else {}),
    }


def refill_from(env: Mapping[str, str]) -> tuple[int, RefillPlan | None]:
    """IMAGE_PIPELINE_LOW_QUEUE (0: no watch) and the refill plan (None: IMAGE_PIPELINE_REFILL unset or
    0). A refill without a LOW_QUEUE threshold refills below its own size."""
    count = int(_get(env, "IMAGE_PIPELINE_REFILL", "0"))
    low = int(_get(env, "IMAGE_PIPELINE_LOW_QUEUE", "0")) or max(0, count)
    if count <= 0:
        return low, None
    status = _get(env, "IMAGE_PIPELINE_REFILL_STATUS", PREVIEW).upper()
    if status not in REFILL_STATUSES:
        raise ValueError(f"IMAGE_PIPELINE_REFILL_STATUS must be PREVIEW or HOLD, got {status!r}")
    cap = int(_get(env, "IMAGE_PIPELINE_DAILY_REFILL_CAP", "1"))
    return low, RefillPlan(count=count, status=status, daily_cap=cap)


def prompt_writer_from(env: Mapping[str, str]) -> PromptWriter:
    """The refill's text model: the HF router with HF_TOKEN, or IMAGE_PIPELINE_REFILL_BASE_URL."""
    return PromptWriter(
        token=dg.EnvVar("HF_TOKEN") if _get(env, "HF_TOKEN") else None,
        model=_get(env, "IMAGE_PIPELINE_REFILL_MODEL", DEFAULT_TEXT_MODEL),
        base_url=_get(env, "IMAGE_PIPELINE_REFILL_BASE_URL") or None,
        **({"timeout_s": _timeout(env)} if _timeout(env) else {}),
    )
