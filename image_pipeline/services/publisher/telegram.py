"""The Telegram Bot API through ``requests``: sendPhoto, sendDocument and sendMediaGroup, paced per chat.

Refusals are classified by ``services/publisher/refusals.py``; an answer lost after the request was sent makes
the delivery uncertain, never a blind repeat.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import logging
import re
import time
from collections.abc import Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import requests
from pydantic import Field, PrivateAttr

from image_pipeline.domain.checks import Check, fail, ok, skipped
from image_pipeline.domain.errors import PipelineError, ServiceWait
from image_pipeline.domain.records import PostReceipt
from image_pipeline.domain.redact import install_log_redaction, redact, register_secret
from image_pipeline.domain.retractions import DELETED, EDITED, GONE, UNCHANGED
from image_pipeline.domain.telegram_limits import CAPTION_MAX_CHARS, MESSAGE_MAX_CHARS
from image_pipeline.domain.uploads import (
    PreparedUpload,
    _album_as_documents,
    _album_note,
    check_album,
    prepare_album,
)
from image_pipeline.services.http import RetryPolicy, call_with_retry, never_reached_server
from image_pipeline.services.publisher import refusals as telegram_refusals
from image_pipeline.services.publisher.interface import Publisher
from image_pipeline.services.publisher.pacing import ChatPacer, SlotBook
from image_pipeline.services.publisher.refusals import DeliveryUncertain

log = logging.getLogger("image_pipeline.publisher")


# ---------------------------------------------------------------------------------------------------
# Telegram
# ---------------------------------------------------------------------------------------------------
TELEGRAM = "Telegram"  # the service name in preflight tables


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
    admin_ids: str = Field(
        default="",
        description="TELEGRAM_ADMIN_IDS: comma-separated Telegram user ids whose presses of a preview card's "
        "buttons count; unset: previews carry no buttons.",
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
        files: Mapping[str, PreparedUpload] | None = None,
        retry_read_timeout: bool = False,
        policy: RetryPolicy | None = None,
    ) -> Any:
        """One Bot API call with retries; raises typed errors whose text never contains the token.

        ``upload`` is the file of sendPhoto / sendDocument; ``files`` are named parts that the request
        refers to with ``attach://<name>`` (sendMediaGroup). Returns the ``result`` of the answer: an
        object, or for sendMediaGroup a list of messages.

        ``retry_read_timeout`` says the request may be sent again without risk of a second post (reads,
        notices, previews): a lost answer or a 5xx is then retried. Without it (a post into the channel)
        they are ``DeliveryUncertain`` and never repeated (``refusals.py``)."""
        parts: dict[str, PreparedUpload] = dict(files or {})
        if upload is not None:
            parts["photo" if upload.method == "sendPhoto" else "document"] = upload

        repeatable = retry_read_timeout
        chat = str(data.get("chat_id", ""))
        setting = (
            "TELEGRAM_ALERT_CHAT_ID"
            if self.alert_chat_id and chat == str(self.alert_chat_id) and chat != str(self.chat_id)
            else "TELEGRAM_CHAT_ID"
        )

        def attempt() -> Any:
            # bytes, not file objects: every attempt uploads every image again in full
            files = {name: (u.filename, u.data, u.content_type) for name, u in parts.items()} or None
            try:
                response = self._http().post(
                    self._url(method),
                    data=data,
                    files=files,
                    timeout=(self.connect_timeout_s, self.read_timeout_s),
                )
            except requests.RequestException as exc:
                # whether the request left decides whether a send may be repeated (refusals.py)
                raise telegram_refusals.classify_transport(
                    method,
                    reached_server=not never_reached_server(exc),
                    timed_out=isinstance(exc, requests.Timeout),
                    repeatable=repeatable,
                    detail=type(exc).__name__,
                    read_timeout_s=self.read_timeout_s,
                ) from None
            return self._parse(method, response, repeatable=repeatable, chat_setting=setting)

        return call_with_retry(attempt, policy or self.retry_policy(), what=f"telegram {method}")

    def preflight(self) -> list[Check]:
        return [*self.caption_checks(), *self._service_checks(), *self._webhook_checks()]

    def _webhook_checks(self) -> list[Check]:
        """With buttons on: a bot with a webhook set gets no updates through getUpdates (409 Conflict)."""
        if not self.card_key():
            return []
        name = "button presses"
        try:
            info = self.call("getWebhookInfo", {}, retry_read_timeout=True, policy=RetryPolicy(1, 0.0))
        except PipelineError as exc:
            return [fail(TELEGRAM, name, str(exc), self._fix_for(exc, "check the network and try again"))]
        if info.get("url"):
            detail = f"the bot has a webhook set ({info['url']}): getUpdates cannot read the presses"
            fix = "delete it: open https://api.telegram.org/bot<TELEGRAM_TOKEN>/deleteWebhook once"
            return [fail(TELEGRAM, name, detail, fix)]
        return [
            ok(
                TELEGRAM,
                name,
                f"no webhook: presses are read with getUpdates by {len(self.admins())} admin id(s)",
            )
        ]

    def card_key(self) -> bytes:
        if not (self.admins() and self.alert_chat_id):
            return b""
        # derived from the token, so nobody without it can make button data the sensor accepts
        return hashlib.sha256(b"image-pipeline preview card\0" + self.token.encode()).digest()

    def admins(self) -> frozenset[int]:
        return frozenset(int(a) for a in re.findall(r"-?\d+", self.admin_ids or ""))

    def get_updates(self, *, offset: int, allowed_updates: Sequence[str]) -> list[dict[str, Any]]:
        data = {
            "offset": str(offset),
            "limit": "100",
            "timeout": "0",
            "allowed_updates": json.dumps(list(allowed_updates)),
        }
        result = self.call("getUpdates", data, retry_read_timeout=True, policy=RetryPolicy(2, 1.0))
        return [u for u in result if isinstance(u, dict)] if isinstance(result, list) else []

    def answer_press(self, *, query_id: str, text: str) -> bool:
        try:
            self.call(
                "answerCallbackQuery",
                {"callback_query_id": query_id, "text": text[:200]},
                policy=RetryPolicy(1, 0.0),
            )
        except telegram_refusals.PromptRejected as exc:
            if exc.status == 400:  # "query is too old": the press is acted on all the same
                return False
            raise
        return True

    def close_card(self, *, chat_id: str, message_id: str, text: str, has_image: bool) -> None:
        # both edits are idempotent: a repeat answers "not modified" (or "not found" for a deleted card)
        where = {"chat_id": chat_id, "message_id": message_id}
        for method, data in (
            ("editMessageReplyMarkup", {**where, "reply_markup": json.dumps({"inline_keyboard": []})}),
            ("editMessageCaption", {**where, "caption": text[:CAPTION_MAX_CHARS]})
            if has_image
            else ("editMessageText", {**where, "text": text[:MESSAGE_MAX_CHARS]}),
        ):
            with contextlib.suppress(telegram_refusals.MessageNotModified, telegram_refusals.MessageGone):
                self.call(method, data, retry_read_timeout=True)

    def _service_checks(self) -> list[Check]:
        """getMe, then getChat and getChatMember for each chat we post to: read-only calls, no message."""
        once = RetryPolicy(attempts=1, base_delay_s=0.0)
        try:
            me = self.call("getMe", {}, retry_read_timeout=True, policy=once)
        except PipelineError as exc:
            fix = self._fix_for(exc, "check TELEGRAM_API_BASE_URL and the network")
            names = ["bot can post", *(["alert chat"] if self.alert_chat_id else [])]
            return [
                fail(TELEGRAM, "token valid", str(exc), fix),
                *skipped(TELEGRAM, ["chat reachable", *names], "needs a valid token"),
            ]
        bot = f"@{me.get('username', me.get('id'))}"
        checks = [ok(TELEGRAM, "token valid", f"bot {bot}")]
        if not self.alert_chat_id:
            return [
                *checks,
                *self._chat_checks(self.chat_id, me, bot, once, ("chat reachable", "bot can post")),
            ]
        # the two chats at once: every worker and every run gate waits for these round trips
        with ThreadPoolExecutor(max_workers=2) as pool:
            channel = pool.submit(
                self._chat_checks, self.chat_id, me, bot, once, ("chat reachable", "bot can post")
            )
            alerts = pool.submit(self._chat_checks, self.alert_chat_id, me, bot, once, (None, "alert chat"))
            return [*checks, *channel.result(), *alerts.result()]

    def _fix_for(self, exc: PipelineError, default: str) -> str:
        """The preflight's fix column for a refusal of getMe / getChat."""
        if isinstance(exc, ServiceWait):
            back = time.strftime("%H:%M:%S UTC", time.gmtime(exc.until))
            return f"nothing to fix: Telegram's flood wait holds every request of the bot until {back}"
        if exc.status in (404, 421) or (exc.status == 401 and "malformed" in str(exc)):
            token = self.token.strip()
            if token.lower().startswith("bot"):
                return "TELEGRAM_TOKEN starts with 'bot': remove that prefix (the URL adds it)"
            if not re.fullmatch(r"\d+:[A-Za-z0-9_-]+", token):
                return "TELEGRAM_TOKEN is not shaped like '<bot id>:<secret>': copy it again from @BotFather"
            return (
                "check TELEGRAM_TOKEN (malformed) and that TELEGRAM_API_BASE_URL points at a Bot API server"
            )
        if exc.status == 401:
            return "copy the token again from @BotFather (/mybots > API Token) into TELEGRAM_TOKEN"
        return default

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
                fix = self._fix_for(exc, "check the network and try again")
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

    def _parse(self, method: str, response: requests.Response, *, repeatable: bool, chat_setting: str) -> Any:
        """The ``result`` of a Bot API answer, or the typed error ``refusals.py`` makes of it."""
        try:
            body = response.json()
            if not isinstance(body, dict):
                raise ValueError("not an object")
        except ValueError:
            answer = telegram_refusals.Answer(
                method,
                response.status_code,
                retry_after_header=response.headers.get("Retry-After"),
                is_bot_api=False,
            )
            raise telegram_refusals.classify(
                answer, repeatable=repeatable, chat_setting=chat_setting
            ) from None
        if body.get("ok") is True:
            return body.get("result") or {}
        params = body.get("parameters")
        answer = telegram_refusals.Answer(
            method,
            int(body.get("error_code") or response.status_code),
            str(body.get("description", "")),
            params if isinstance(params, dict) else None,
            response.headers.get("Retry-After"),
        )
        raise telegram_refusals.classify(answer, repeatable=repeatable, chat_setting=chat_setting)

    def pacer(self) -> ChatPacer:
        if self._pacer is None:
            self._pacer = ChatPacer(self.posts_per_minute, self.pacing_state_path)
        return self._pacer

    def pace_with(self, slots: SlotBook | None) -> None:
        self.pacer().slots = slots

    def publish(self, *, prompt_id: str, png: bytes, caption: str, silent: bool = False) -> PostReceipt:
        return self._post(str(self.chat_id), [png], prompt_id, caption, silent=silent)

    def publish_album(
        self, *, prompt_id: str, pngs: list[bytes], caption: str, silent: bool = False
    ) -> PostReceipt:
        check_album(pngs)
        return self._post(str(self.chat_id), list(pngs), prompt_id, caption, silent=silent)

    def publish_original(
        self, *, prompt_id: str, pngs: list[bytes], caption: str = "", silent: bool = False
    ) -> PostReceipt:
        check_album(pngs)
        documents = _album_as_documents(pngs, prompt_id, "the original PNG")
        return self._post(str(self.chat_id), list(pngs), prompt_id, caption, silent=silent, uploads=documents)

    def preview(
        self, *, prompt_id: str, pngs: list[bytes], caption: str, buttons: Sequence[tuple[str, str]] = ()
    ) -> PostReceipt | None:
        """The image(s) into the alert chat only; None without TELEGRAM_ALERT_CHAT_ID.

        A preview sent twice lands in the operators' chat, not the channel, so unlike a post a lost answer
        is retried (as for notices)."""
        check_album(pngs)
        if not self.alert_chat_id:
            return None
        keyboard = {"inline_keyboard": [[{"text": t, "callback_data": d} for t, d in buttons]]}
        markup = json.dumps(keyboard) if buttons and len(pngs) == 1 else ""
        chat = str(self.alert_chat_id)
        receipt = self._post(
            chat, list(pngs), prompt_id, redact(caption), retry_read_timeout=True, markup=markup
        )
        if not buttons or markup:
            return receipt
        # an album's messages take no keyboard: the buttons go on a card of their own under it
        text = f"PREVIEW of {prompt_id}: the {len(pngs)} images above"
        data = {"chat_id": chat, "text": text, "reply_markup": json.dumps(keyboard)}
        card = self.call("sendMessage", data, retry_read_timeout=True)
        return dataclasses.replace(receipt, message_id=str(card.get("message_id", "")))

    def _post(
        self,
        chat_id: str,
        pngs: list[bytes],
        prompt_id: str,
        caption: str,
        *,
        retry_read_timeout: bool = False,
        silent: bool = False,
        uploads: list[PreparedUpload] | None = None,
        markup: str = "",
    ) -> PostReceipt:
        uploads = uploads or prepare_album(pngs, prompt_id)
        # Wait our turn before Telegram has to say 429: its retry_after blocks the whole bot. Telegram
        # counts each image of an album as a message, so an album takes one turn per image.
        for _ in uploads:
            self.pacer().wait_turn(chat_id)
        try:
            return self._send(chat_id, uploads, pngs, prompt_id, caption, retry_read_timeout, silent, markup)
        finally:
            # spacing counts from when Telegram took the post, which is what its own window counts
            self.pacer().sent(chat_id)

    def _send(
        self,
        chat_id: str,
        uploads: list[PreparedUpload],
        pngs: list[bytes],
        prompt_id: str,
        caption: str,
        retry_read_timeout: bool,
        silent: bool = False,
        markup: str = "",
    ) -> PostReceipt:
        try:
            messages = self._request(chat_id, uploads, caption, retry_read_timeout, silent, markup)
        except (telegram_refusals.PhotoRefused, telegram_refusals.CaptionRefused) as exc:
            # A 400 means nothing was posted (an album is refused whole), so one corrected try is safe.
            if isinstance(exc, telegram_refusals.PhotoRefused):
                if uploads[0].method != "sendPhoto":
                    raise
                # Telegram refused it as a photo; as a document it is delivered byte for byte.
                uploads = _album_as_documents(pngs, prompt_id, f"Telegram refused the photo ({exc})")
            else:
                # Telegram counted more than we did (e.g. UTF-16 units): cut harder and try once more.
                caption = _cut_utf16(caption, CAPTION_MAX_CHARS)
            messages = self._request(chat_id, uploads, caption, retry_read_timeout, silent, markup)
        return self._receipt(chat_id, messages, uploads)

    def _request(
        self,
        chat_id: str,
        uploads: list[PreparedUpload],
        caption: str,
        retry_read_timeout: bool,
        silent: bool = False,
        markup: str = "",
    ) -> list[dict[str, Any]]:
        # sendPhoto, sendDocument and sendMediaGroup all take disable_notification (Client.cpp)
        quiet = {"disable_notification": "true"} if silent else {}
        if markup:  # a preview card's buttons (one upload only: an album takes no keyboard)
            quiet["reply_markup"] = markup
        if len(uploads) == 1:
            upload = uploads[0]
            data = {"chat_id": chat_id, "caption": caption, **quiet}
            return [self.call(upload.method, data, upload, retry_read_timeout=retry_read_timeout)]
        media, files = _media_group(uploads, caption)
        result = self.call(
            "sendMediaGroup",
            {"chat_id": chat_id, "media": media, **quiet},
            files=files,
            retry_read_timeout=retry_read_timeout,
        )
        messages = [m for m in result if isinstance(m, dict)] if isinstance(result, list) else []
        if not messages:
            # posted, most likely, but without the ids there is nothing to record: never repeat it blindly
            raise DeliveryUncertain(
                "Telegram sendMediaGroup: the answer lists no messages; the album may have gone through, so "
                "it is not retried automatically. Check the channel before running again",
                service="telegram",
            )
        return messages

    def _receipt(
        self, chat_id: str, messages: list[dict[str, Any]], uploads: list[PreparedUpload]
    ) -> PostReceipt:
        chat = messages[0].get("chat") or {}
        ids = tuple(str(m.get("message_id", "")) for m in messages)
        return PostReceipt(
            chat_id=str(chat.get("id", chat_id)),
            message_id=ids[0],
            method=uploads[0].method if len(uploads) == 1 else "sendMediaGroup",
            link=message_link(chat, ids[0]),
            sent_bytes=sum(len(u.data) for u in uploads),
            note=_album_note(uploads),
            message_ids=ids,
        )

    def edit_caption(self, *, chat_id: str, message_id: str, caption: str) -> str:
        # Setting the same caption twice changes nothing, so a lost answer is retried (repeatable): the
        # repeat answers "message is not modified" if the first call went through.
        data = {"chat_id": chat_id, "message_id": message_id, "caption": caption}
        try:
            self.call("editMessageCaption", data, retry_read_timeout=True)
        except telegram_refusals.MessageNotModified:
            return UNCHANGED
        return EDITED

    def delete_message(self, *, chat_id: str, message_id: str) -> str:
        # Message ids are never reused in a chat, so a repeated delete can only answer "not found"
        try:
            self.call(
                "deleteMessage", {"chat_id": chat_id, "message_id": message_id}, retry_read_timeout=True
            )
        except telegram_refusals.MessageGone:
            return GONE
        return DELETED

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


def _media_group(uploads: Sequence[PreparedUpload], caption: str) -> tuple[str, dict[str, PreparedUpload]]:
    """sendMediaGroup's ``media`` JSON and the file parts it attaches; the caption goes on the first item,
    which is where Telegram clients show an album's caption."""
    media: list[dict[str, str]] = []
    files: dict[str, PreparedUpload] = {}
    for i, upload in enumerate(uploads, 1):
        name = f"image{i}"
        item = {"type": "photo" if upload.method == "sendPhoto" else "document", "media": f"attach://{name}"}
        if i == 1 and caption:
            item["caption"] = caption
        media.append(item)
        files[name] = upload
    return json.dumps(media, ensure_ascii=False), files


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
