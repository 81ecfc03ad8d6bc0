"""The publisher: the Telegram Bot API through requests, or a local outbox folder with a gallery."""

from __future__ import annotations

import contextlib
import fcntl
import io
import json
import logging
import os
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import dagster as dg
import requests
from PIL import Image
from pydantic import Field, PrivateAttr

from .. import gallery
from ..errors import PipelineError, PromptRejected, ServiceBlocked, TransientError
from ..files import atomic_write
from ..pacing import ChatPacer
from ..preflight import Check, fail, ok, skipped
from ..redact import install_log_redaction, redact, register_secret
from ..retry import RetryPolicy, call_with_retry
from ..transport import never_reached_server

log = logging.getLogger("image_pipeline.publisher")

# Telegram's documented sendPhoto limits.
PHOTO_MAX_BYTES = 10 * 1024 * 1024
PHOTO_MAX_SIDE_SUM = 10_000
PHOTO_MAX_RATIO = 20.0
DOCUMENT_MAX_BYTES = 50 * 1024 * 1024
MESSAGE_MAX_CHARS = 4096


@dataclass(frozen=True)
class PostReceipt:
    chat_id: str
    message_id: str
    method: str
    link: str
    sent_bytes: int
    note: str = ""


@dataclass(frozen=True)
class PreparedUpload:
    method: str  # sendPhoto or sendDocument
    data: bytes
    filename: str
    content_type: str
    note: str


def prepare_upload(png: bytes, prompt_id: str) -> PreparedUpload:
    """Fit an image into sendPhoto's limits, or fall back to sendDocument (which keeps it untouched)."""
    try:
        im = Image.open(io.BytesIO(png))
        im.load()
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError):
        raise PromptRejected("the image cannot be decoded; nothing was sent", service="telegram") from None
    with im:
        width, height = im.size
        ratio = max(width, height) / max(1, min(width, height))
        if width + height > PHOTO_MAX_SIDE_SUM or ratio > PHOTO_MAX_RATIO:
            return _as_document(png, prompt_id, f"{width}x{height} is outside Telegram's photo limits")
        if len(png) <= PHOTO_MAX_BYTES:
            return PreparedUpload("sendPhoto", png, f"{prompt_id}.png", "image/png", "")
        rgb = im.convert("RGB")
        for quality in (92, 85, 75, 60):
            buf = io.BytesIO()
            rgb.save(buf, format="JPEG", quality=quality, optimize=True)
            if buf.tell() <= PHOTO_MAX_BYTES:
                note = f"PNG of {len(png)} bytes recompressed to JPEG quality {quality} ({buf.tell()} bytes)"
                return PreparedUpload("sendPhoto", buf.getvalue(), f"{prompt_id}.jpg", "image/jpeg", note)
    return _as_document(png, prompt_id, f"{len(png)} bytes is over the 10 MB photo limit even as JPEG")


def _as_document(png: bytes, prompt_id: str, why: str) -> PreparedUpload:
    if len(png) > DOCUMENT_MAX_BYTES:
        raise PromptRejected(
            f"the image is {len(png)} bytes, over Telegram's 50 MB document limit", service="telegram"
        )
    return PreparedUpload("sendDocument", png, f"{prompt_id}.png", "image/png", f"sent as a document: {why}")


class Publisher(dg.ConfigurableResource):
    """Publishes an image with a caption and sends operator notices. Subclasses pick the backend."""

    retry_attempts: int = Field(default=4, description="Tries per request, the first included.")
    retry_base_delay_s: float = Field(default=2.0, description="First backoff delay; doubles per retry.")

    def describe(self) -> str:
        raise NotImplementedError

    def publish(self, *, prompt_id: str, png: bytes, caption: str) -> PostReceipt:
        raise NotImplementedError

    def notify(self, text: str) -> bool:
        """Send an operator notice; False when no alert destination is configured."""
        raise NotImplementedError

    def retry_policy(self) -> RetryPolicy:
        return RetryPolicy(attempts=max(1, self.retry_attempts), base_delay_s=self.retry_base_delay_s)


# ---------------------------------------------------------------------------------------------------
# Telegram
# ---------------------------------------------------------------------------------------------------
TELEGRAM = "Telegram"  # the service name in preflight tables


class DeliveryUncertain(ServiceBlocked):
    """Telegram may have accepted the post but we never saw the answer; retrying could post twice."""


class TelegramPublisher(Publisher):
    """Telegram Bot API ``sendPhoto`` / ``sendDocument`` / ``sendMessage`` through requests."""

    token: str = Field(description="Bot token (bind with EnvVar('TELEGRAM_TOKEN')).")
    chat_id: str = Field(description="Channel or chat id, or @channelusername.")
    alert_chat_id: str | None = Field(default=None, description="Where failure notices go; unset: none.")
    api_base_url: str = Field(default="https://api.telegram.org", description="Bot API server.")
    connect_timeout_s: float = Field(default=10.0, description="TCP connect timeout.")
    read_timeout_s: float = Field(default=60.0, description="Time to wait for Telegram's answer.")
    posts_per_minute: float = Field(
        default=20.0,
        description="Posts into the chat per minute, evenly spaced (Telegram allows ~20); 0: off.",
    )
    pacing_state_path: str | None = Field(
        default=None, description="File that keeps the spacing across runs and processes; unset: per process."
    )

    _session: requests.Session | None = PrivateAttr(default=None)
    _pacer: ChatPacer | None = PrivateAttr(default=None)

    def describe(self) -> str:
        base = self.api_base_url.rstrip("/")
        return f"Telegram Bot API ({base}, chat {self.chat_id})"

    def _http(self) -> requests.Session:
        if self._session is None:
            register_secret(self.token)
            install_log_redaction()
            self._session = requests.Session()
        return self._session

    def _url(self, method: str) -> str:
        return f"{self.api_base_url.rstrip('/')}/bot{self.token}/{method}"

    def call(
        self,
        method: str,
        data: dict[str, Any],
        upload: PreparedUpload | None = None,
        *,
        retry_read_timeout: bool = False,
        policy: RetryPolicy | None = None,
    ) -> dict[str, Any]:
        """One Bot API call with retries; raises typed errors whose text never contains the token."""

        def attempt() -> dict[str, Any]:
            files = None
            if upload is not None:
                field = "photo" if upload.method == "sendPhoto" else "document"
                # bytes, not a file object: every attempt uploads the whole image again
                files = {field: (upload.filename, upload.data, upload.content_type)}
            try:
                response = self._http().post(
                    self._url(method),
                    data=data,
                    files=files,
                    timeout=(self.connect_timeout_s, self.read_timeout_s),
                )
            except requests.ConnectTimeout:
                raise TransientError(f"Telegram {method}: connect timed out", service="telegram") from None
            except requests.ReadTimeout:
                if retry_read_timeout:
                    raise TransientError(
                        f"Telegram {method}: no answer in time", service="telegram"
                    ) from None
                raise DeliveryUncertain(
                    f"Telegram {method}: no answer within {self.read_timeout_s:g}s; the post may have gone "
                    "through, so it is not retried automatically. Check the channel before running again",
                    service="telegram",
                ) from None
            except requests.RequestException as exc:
                if retry_read_timeout or never_reached_server(exc):
                    raise TransientError(
                        f"Telegram {method}: connection failed ({type(exc).__name__})", service="telegram"
                    ) from None
                # The request went out and the connection broke before a full answer came back: Telegram
                # may have posted it, so a blind retry could post it twice.
                raise DeliveryUncertain(
                    f"Telegram {method}: the connection broke before Telegram answered "
                    f"({type(exc).__name__}); the post may have gone through, so it is not retried "
                    "automatically. Check the channel before running again",
                    service="telegram",
                ) from None
            return self._parse(method, response)

        return call_with_retry(attempt, policy or self.retry_policy(), what=f"telegram {method}")

    def preflight(self) -> list[Check]:
        """getMe, then getChat and getChatMember for each chat we post to: read-only calls, no message."""
        once = RetryPolicy(attempts=1, base_delay_s=0.0)
        try:
            me = self.call("getMe", {}, retry_read_timeout=True, policy=once)
        except PipelineError as exc:
            fix = (
                "copy the token again from @BotFather (/mybots > API Token) into TELEGRAM_TOKEN"
                if exc.status == 401
                else "check TELEGRAM_API_BASE_URL and the network"
            )
            names = ["bot can post", *(["alert chat"] if self.alert_chat_id else [])]
            return [
                fail(TELEGRAM, "token valid", str(exc), fix),
                *skipped(TELEGRAM, ["chat reachable", *names], "needs a valid token"),
            ]
        bot = f"@{me.get('username', me.get('id'))}"
        checks = [ok(TELEGRAM, "token valid", f"bot {bot}")]
        checks.extend(
            self._chat_checks(self.chat_id, me, bot, once, names=("chat reachable", "bot can post"))
        )
        if self.alert_chat_id:
            checks.extend(self._chat_checks(self.alert_chat_id, me, bot, once, names=(None, "alert chat")))
        return checks

    def _chat_checks(
        self, chat_id: str, me: dict[str, Any], bot: str, once: RetryPolicy, names: tuple[str | None, str]
    ) -> list[Check]:
        reach, post = names
        variable = "TELEGRAM_CHAT_ID" if reach else "TELEGRAM_ALERT_CHAT_ID"
        try:
            chat = self.call("getChat", {"chat_id": chat_id}, retry_read_timeout=True, policy=once)
        except PipelineError as exc:
            if exc.status == 403:
                fix = f"add {bot} to the chat again (as an administrator allowed to post, for a channel)"
            elif exc.status == 400:
                fix = f"check {variable} (-100... for a channel or group, or @channelusername) and add {bot} to it"
            else:
                fix = "check the network and try again"
            return [
                fail(TELEGRAM, reach or post, str(exc), fix),
                *([skipped(TELEGRAM, [post], "needs the chat")[0]] if reach else []),
            ]
        kind = str(chat.get("type", "?"))
        label = chat.get("title") or chat.get("username") or chat.get("first_name") or chat_id
        where = f"{kind} {label!r}" + (f" (@{chat['username']})" if chat.get("username") else "")
        checks = [ok(TELEGRAM, reach, where)] if reach else []
        if kind == "private":
            return [*checks, ok(TELEGRAM, post, f"{where}: private chat with {bot}")]
        try:
            member = self.call(
                "getChatMember",
                {"chat_id": chat_id, "user_id": str(me.get("id", ""))},
                retry_read_timeout=True,
                policy=once,
            )
        except PipelineError as exc:
            return [*checks, fail(TELEGRAM, post, str(exc), f"add {bot} to the {kind}")]
        status = str(member.get("status", ""))
        if kind == "channel":
            if status == "creator" or (status == "administrator" and member.get("can_post_messages")):
                return [*checks, ok(TELEGRAM, post, f"{bot} is an administrator allowed to post in {where}")]
            fix = f"add {bot} to the channel as an administrator with the right 'Post messages'"
            return [*checks, fail(TELEGRAM, post, f"{bot} is {status or 'not a member'} in {where}", fix)]
        if status in ("left", "kicked"):
            return [
                *checks,
                fail(TELEGRAM, post, f"{bot} is not in {where} ({status})", f"add {bot} to the {kind}"),
            ]
        if status == "restricted" and not (member.get("can_send_photos") and member.get("is_member", True)):
            fix = f"allow {bot} to send photos in the {kind}'s permissions"
            return [*checks, fail(TELEGRAM, post, f"{bot} may not send photos in {where}", fix)]
        return [*checks, ok(TELEGRAM, post, f"{bot} is a {status} of {where}")]

    def _parse(self, method: str, response: requests.Response) -> dict[str, Any]:
        try:
            body = response.json()
            if not isinstance(body, dict):
                raise ValueError("not an object")
        except ValueError:
            if response.status_code >= 500 or response.status_code in (200, 429):
                raise TransientError(
                    f"Telegram {method}: unreadable answer (HTTP {response.status_code})",
                    service="telegram",
                    status=response.status_code,
                ) from None
            raise PromptRejected(
                f"Telegram {method}: HTTP {response.status_code} without a Bot API answer",
                service="telegram",
                status=response.status_code,
            ) from None
        if body.get("ok") is True:
            return body.get("result") or {}
        code = int(body.get("error_code") or response.status_code)
        description = redact(str(body.get("description", "")))[:300]
        params = body.get("parameters") or {}
        if code == 429:
            wait = params.get("retry_after") or response.headers.get("Retry-After")
            raise TransientError(
                f"Telegram {method}: rate limited (429), retry after {wait}s",
                service="telegram",
                status=429,
                retry_after=float(wait) if wait is not None else None,
            )
        if code >= 500:
            raise TransientError(f"Telegram {method}: {code} {description}", service="telegram", status=code)
        if code == 401:
            raise ServiceBlocked(
                "Telegram rejected the bot token (401 Unauthorized): check TELEGRAM_TOKEN (from @BotFather)",
                service="telegram",
                status=code,
            )
        if code == 403:
            raise ServiceBlocked(
                f"Telegram {method}: {description}. Add the bot to the channel as an administrator "
                "allowed to post messages",
                service="telegram",
                status=code,
            )
        if "migrate_to_chat_id" in params:
            raise ServiceBlocked(
                f"Telegram {method}: the group became a supergroup; set TELEGRAM_CHAT_ID to "
                f"{params['migrate_to_chat_id']}",
                service="telegram",
                status=code,
            )
        if "chat not found" in description.lower():
            raise ServiceBlocked(
                f"Telegram {method}: chat not found. Check TELEGRAM_CHAT_ID (a channel id looks like "
                "-100…, or use @channelusername) and that the bot was added to it",
                service="telegram",
                status=code,
            )
        raise TelegramBadRequest(f"Telegram {method}: {description}", service="telegram", status=code)

    def pacer(self) -> ChatPacer:
        if self._pacer is None:
            self._pacer = ChatPacer(self.posts_per_minute, self.pacing_state_path)
        return self._pacer

    def publish(self, *, prompt_id: str, png: bytes, caption: str) -> PostReceipt:
        upload = prepare_upload(png, prompt_id)
        data = {"chat_id": self.chat_id, "caption": caption}
        # Wait our turn before Telegram has to say 429: its retry_after blocks the whole bot.
        self.pacer().wait_turn(str(self.chat_id))
        try:
            return self._send(upload, data, png, prompt_id, caption)
        finally:
            # spacing counts from when Telegram took the post, which is what its own window counts
            self.pacer().sent(str(self.chat_id))

    def _send(
        self, upload: PreparedUpload, data: dict[str, Any], png: bytes, prompt_id: str, caption: str
    ) -> PostReceipt:
        try:
            result = self.call(upload.method, data, upload)
        except TelegramBadRequest as exc:
            text = str(exc).upper()
            if upload.method == "sendPhoto" and any(
                code in text
                for code in ("PHOTO_INVALID_DIMENSIONS", "IMAGE_PROCESS_FAILED", "PHOTO_SAVE_FILE_INVALID")
            ):
                # Telegram refused it as a photo; as a document it is delivered byte for byte.
                upload = _as_document(png, prompt_id, f"Telegram refused the photo ({exc})")
                result = self.call(upload.method, data, upload)
            elif "CAPTION IS TOO LONG" in text:
                # Telegram counted more than we did (e.g. UTF-16 units): cut harder and try once more.
                data["caption"] = _cut_utf16(caption, 1024)
                result = self.call(upload.method, data, upload)
            else:
                raise PromptRejected(str(exc), service="telegram", status=exc.status) from None
        return self._receipt(result, upload)

    def _receipt(self, result: dict[str, Any], upload: PreparedUpload) -> PostReceipt:
        chat = result.get("chat") or {}
        chat_id = str(chat.get("id", self.chat_id))
        message_id = str(result.get("message_id", ""))
        return PostReceipt(
            chat_id=chat_id,
            message_id=message_id,
            method=upload.method,
            link=message_link(chat, message_id),
            sent_bytes=len(upload.data),
            note=upload.note,
        )

    def notify(self, text: str) -> bool:
        if not self.alert_chat_id:
            return False
        try:
            self.call(
                "sendMessage",
                {"chat_id": self.alert_chat_id, "text": redact(text)[:MESSAGE_MAX_CHARS]},
                retry_read_timeout=True,
            )
        except PipelineError as exc:
            # A notice that cannot be delivered must not turn into a second failure.
            log.warning("could not send the failure notice: %s", exc)
            return False
        return True


class TelegramBadRequest(PipelineError):
    """A 400 from Telegram that is about this post (decided by ``publish``)."""


def _cut_utf16(text: str, limit: int) -> str:
    if len(text.encode("utf-16-le")) // 2 <= limit:
        return text
    out = []
    used = 0
    for ch in text:
        units = len(ch.encode("utf-16-le")) // 2
        if used + units > limit - 1:
            break
        out.append(ch)
        used += units
    return "".join(out) + "…"


def message_link(chat: dict[str, Any], message_id: str) -> str:
    username = chat.get("username")
    if username and message_id:
        return f"https://t.me/{username}/{message_id}"
    chat_id = str(chat.get("id", ""))
    if chat_id.startswith("-100") and message_id:
        return f"https://t.me/c/{chat_id[4:]}/{message_id}"  # private channel: works for its members
    return ""


# ---------------------------------------------------------------------------------------------------
# Local outbox
# ---------------------------------------------------------------------------------------------------
class LocalOutbox(Publisher):
    """Embedded default: each post is an image file plus a line in posts.jsonl, shown in index.html."""

    folder: str = Field(description="Folder for images/, posts.jsonl, notices.jsonl and index.html.")

    def describe(self) -> str:
        return f"local outbox {self.folder}"

    def preflight(self) -> list[Check]:
        existing = Path(self.folder)
        while not existing.exists() and existing != existing.parent:
            existing = existing.parent
        if not os.access(existing, os.W_OK):
            return [fail(TELEGRAM, "outbox", f"{existing} is not writable", "set IMAGE_PIPELINE_OUTBOX")]
        return [
            ok(TELEGRAM, "outbox", f"local outbox {self.folder} (no TELEGRAM_TOKEN / TELEGRAM_CHAT_ID set)")
        ]

    @property
    def root(self) -> Path:
        return Path(self.folder)

    @contextlib.contextmanager
    def _locked(self) -> Iterator[None]:
        self.root.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.root / ".outbox.lock", os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            fcntl.flock(fd, fcntl.LOCK_UN)
            os.close(fd)

    def posts(self) -> list[dict[str, Any]]:
        return _read_jsonl(self.root / "posts.jsonl")

    def notices(self) -> list[dict[str, Any]]:
        return _read_jsonl(self.root / "notices.jsonl")

    def publish(self, *, prompt_id: str, png: bytes, caption: str) -> PostReceipt:
        upload = prepare_upload(png, prompt_id)
        with self._locked():
            posts = self.posts()
            message_id = str(max((int(p["message_id"]) for p in posts), default=0) + 1)
            images = self.root / "images"
            images.mkdir(exist_ok=True)
            filename = f"{int(message_id):05d}-{upload.filename}"
            atomic_write(images / filename, upload.data)
            post = {
                "message_id": message_id,
                "chat_id": "outbox",
                "prompt_id": prompt_id,
                "caption": caption,
                "file": f"images/{filename}",
                "method": upload.method,
                "note": upload.note,
                "date": datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
            }
            _append_jsonl(self.root / "posts.jsonl", post)
            posts.append(post)
            self._write_gallery(posts)
        receipt = PostReceipt(
            "outbox",
            message_id,
            upload.method,
            (self.root / "index.html").as_uri(),
            len(upload.data),
            upload.note,
        )
        return receipt

    def notify(self, text: str) -> bool:
        with self._locked():
            notice = {"date": datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ"), "text": redact(text)}
            _append_jsonl(self.root / "notices.jsonl", notice)
            self._write_gallery(self.posts())
        return True

    def _write_gallery(self, posts: list[dict[str, Any]]) -> None:
        # the whole page again on every post and notice: about 10 ms at 1000 entries (gallery.py)
        gallery.write(self.root, posts, self.notices())


def _append_jsonl(path: Path, record: dict[str, Any]) -> None:
    with open(path, "a", encoding="utf-8") as fh:
        fh.write(json.dumps(record, ensure_ascii=False) + "\n")


def _read_jsonl(path: Path) -> list[dict[str, Any]]:
    if not path.exists():
        return []
    out = []
    with open(path, encoding="utf-8") as fh:
        for line in fh:
            line = line.strip()
            if line:
                with contextlib.suppress(json.JSONDecodeError):
                    out.append(json.loads(line))
    return out


def receipt_dict(receipt: PostReceipt) -> dict[str, Any]:
    return asdict(receipt)
