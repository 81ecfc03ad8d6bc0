"""The Telegram Bot API: every answer the product can get from the methods it calls, as rules.

The product calls getMe, getChat and getChatMember (reads: the doctor and the run gate), sendPhoto,
sendDocument and sendMediaGroup (the post), sendMessage (notices), editMessageCaption and deleteMessage
(EDIT / DELETE typed in Done). ``classify`` turns an answer
(HTTP status, Telegram's ``description`` and its ``parameters``) into the pipeline's typed error;
``classify_transport`` does the same for a request that got no answer at all.

How the Bot API words its answers (``tdlib/telegram-bot-api`` ``Client.cpp`` ``fail_query_with_error``):
tdlib's own messages pass through with their first letter lower-cased and a ``Bad Request: `` /
``Forbidden: `` / ``Unauthorized: `` prefix; Telegram's UPPER_CASE codes pass through unchanged, and a
403 that is an UPPER_CASE code (``CHAT_WRITE_FORBIDDEN``) is turned into a **400**. That is why a chat's
rights come back as 400s, which a classification by status alone reads as "this post is bad".

Decisions, and why:

- **Rights, membership, token, chat id** (400 ``need administrator rights in the channel chat``, 403
  ``bot was kicked``, 401, 404 ``Not Found`` for a malformed token on ``api.telegram.org``, a group that
  became a supergroup...) refuse the next prompt exactly like this one: SERVICE, the run stops and the
  message names the fix. python-telegram-bot (``telegram/request/_baserequest.py``: Forbidden,
  InvalidToken for 401 *and* 404, ChatMigrated) and aiogram (``aiogram/exceptions.py``:
  TelegramForbiddenError, TelegramUnauthorizedError, TelegramNotFound, TelegramMigrateToChat) draw the
  same lines.
- **Flood waits.** A 429 carries ``parameters.retry_after`` (``Query.cpp`` ``set_retry_after_error``)
  and while it runs the server answers every method of the bot the same way (``Client.cpp``
  ``get_closing_error``: ``next_authorization_time_``). Up to ``LONG_WAIT_S`` it is waited out and
  retried (TRANSIENT with the hint); longer, the run stops and the resume time is recorded (WAIT). It is
  never an attempt of the prompt.
- **A 5xx or a lost answer on a send is UNKNOWN, never retried blind.** A 502/504 from the front can
  follow a request the Bot API server already executed, and bots have no idempotency key
  (``random_id`` is not exposed: tdlib/telegram-bot-api#482), and a bot cannot read a channel's history to
  check. So a post whose answer was a 5xx, was cut, or never came is ``DeliveryUncertain``: not sent
  again, recorded as uncertain, for a person to check. One exception: ``Internal Server Error:
  restart`` is what the server answers to queries that arrive while the bot's client closes
  (``Client.cpp`` ``get_closing_error``): they never reached tdlib, so they are retried. A 5xx on a read
  (getMe, getChat, getChatMember) or on a notice is TRANSIENT: repeating a read is harmless, and a notice
  sent twice lands in the operators' chat, not the channel.
- **Transport.** A connection that never opened (refused, DNS, connect timeout) sent nothing: TRANSIENT.
  A read timeout or a connection cut after the request left may have posted: UNKNOWN for a send.
- **The post's own faults** (PROMPT): the photo Telegram will not take as a photo (dimensions, size,
  undecodable) and a caption it counts as too long. The publisher tries once more as a document / with
  a shorter caption before it gives up (``PhotoRefused`` / ``CaptionRefused`` say which). Any other 400
  to a send is about the post as well: every 400 about the chat or the bot is listed here as SERVICE.
- A body that is not the Bot API's JSON: a 4xx means ``TELEGRAM_API_BASE_URL`` is not a Bot API server
  (or a proxy in front of it refuses us): SERVICE; a 5xx or a 200 follows the rules above for its method.

Messages carry Telegram's description (redacted, shortened), never the token or the URL.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from image_pipeline.domain.errors import PipelineError, PromptRejected, ServiceBlocked
from image_pipeline.domain.redact import redact
from image_pipeline.domain.refusals import Refusal, Rule, first_rule, refuse

SERVICE = "telegram"
# the longest piece of Telegram's own text a message carries
TEXT_LIMIT = 300
PHOTO_MAX_BYTES = 10 * 1024 * 1024  # td FileLoaderUtils.cpp MAX_PHOTO_SIZE


class DeliveryUncertain(ServiceBlocked):
    """Telegram may have accepted the post but we never saw the answer; retrying could post twice."""

    uncertain = True  # refusals.refusal_of: UNKNOWN


class PhotoRefused(PromptRejected):
    """Telegram would not take the upload as a photo; as a document the same bytes go through."""


class CaptionRefused(PromptRejected):
    """Telegram counted the caption as too long (it counts after entity parsing, in its own units)."""


class MessageGone(PromptRejected):
    """editMessageCaption / deleteMessage: the message is not in the chat (deleted, or never there)."""


class MessageNotModified(PromptRejected):
    """editMessageCaption: the message already has exactly that caption."""


class MessageNotDeletable(PromptRejected):
    """deleteMessage refused: older than 48 hours for a bot, or the bot lacks the right to delete."""


# what a rule asks the publisher to try once before the refusal stands
AS_DOCUMENT = "as_document"
SHORTER_CAPTION = "shorter_caption"
# the answers of editMessageCaption / deleteMessage that say where the message stands (retractions)
GONE, NOT_MODIFIED, NOT_DELETABLE = "gone", "not_modified", "not_deletable"


@dataclass(frozen=True)
class TelegramRule(Rule):
    fallback: str = ""


_TD = "tdlib/td"
_BOTAPI = "tdlib/telegram-bot-api telegram-bot-api/Client.cpp"
_TOKEN_FIX = "copy the token again from @BotFather (/mybots > API Token) into TELEGRAM_TOKEN"
_MALFORMED_FIX = (
    "check TELEGRAM_TOKEN: the token is malformed. It is '<bot id>:<secret>' exactly as @BotFather gives "
    "it (no 'bot' prefix, no quotes or spaces); if TELEGRAM_API_BASE_URL is set, it must point at a Bot "
    "API server"
)
_ADMIN_FIX = "make the bot an administrator of the channel with the right 'Post messages' ({setting})"
_ADD_FIX = (
    "add the bot to the channel as an administrator allowed to post messages (to a group: as a member; "
    "the chat is {setting})"
)
_CHAT_FIX = (
    "check {setting} (a channel or group id looks like -100…, or use @channelusername) and that the bot "
    "was added to it"
)

RULES: tuple[TelegramRule, ...] = (
    # ---- the chat: rights and membership (400s, see the module docstring) ------------------------
    TelegramRule(
        Refusal.SERVICE,
        frozenset({400, 403}),
        r"need administrator rights in the channel chat",
        _ADMIN_FIX,
        f"{_TD} td/telegram/DialogManager.cpp can_send_message_to_dialog (a channel without can_post_messages)",
    ),
    TelegramRule(
        Refusal.SERVICE,
        frozenset({400, 403}),
        r"not enough rights to send \w+( \w+)? to the chat",
        "allow the bot to send photos and files in the permissions of the chat of {setting}, or make it an "
        "administrator",
        f"{_TD} td/telegram/MessageContent.cpp can_send_message_content (a restricted member)",
    ),
    TelegramRule(
        Refusal.SERVICE,
        frozenset({400, 403}),
        r"have no rights to send a message|have no write access to the chat",
        "let the bot write in the chat of {setting}: make it an administrator allowed to post, or lift "
        "its restriction",
        f"{_TD} td/telegram/DialogManager.cpp ('Have no write access to the chat'); the older wording in "
        "python-telegram-bot and aiogram issue reports",
    ),
    TelegramRule(
        Refusal.SERVICE,
        frozenset({400, 403}),
        r"\b(CHAT_WRITE_FORBIDDEN|CHAT_ADMIN_REQUIRED|CHAT_RESTRICTED|USER_BANNED_IN_CHANNEL|"
        r"CHAT_SEND_(PHOTOS|DOCS|MEDIA|PLAIN)_FORBIDDEN)\b",
        "let the bot post in the chat of {setting}: make it an administrator allowed to post, or lift its "
        "restriction",
        f"https://core.telegram.org/method/messages.sendMedia (errors); {_BOTAPI} fail_query_with_error "
        "turns these UPPER_CASE 403s into 400",
    ),
    TelegramRule(
        Refusal.SERVICE,
        frozenset({400}),
        r"\b(TOPIC_CLOSED|TOPIC_DELETED)\b|message thread not found",
        "reopen the chat's topic, or point {setting} at a chat the bot can post in",
        "https://core.telegram.org/method/messages.sendMedia (errors); tdlib/td DraftMessageManager.cpp",
    ),
    TelegramRule(
        Refusal.SERVICE,
        frozenset({403}),
        r"bot was blocked by the user",
        "unblock the bot in its private chat (or point {setting} at a channel)",
        f"{_BOTAPI} fail_query_with_error (USER_IS_BLOCKED)",
    ),
    TelegramRule(
        Refusal.SERVICE,
        frozenset({403}),
        r"bot can't initiate conversation|bot can't send messages to bots|user is deactivated",
        "point {setting} at a chat the bot can write to (a user must /start it first)",
        f"{_BOTAPI} check_chat; https://core.telegram.org/bots/faq",
    ),
    TelegramRule(
        Refusal.SERVICE,
        frozenset({403}),
        "",  # "bot was kicked from the channel chat", "bot is not a member of the channel chat", ...
        _ADD_FIX,
        f"{_BOTAPI} check_chat_access (bot was kicked / is not a member of the <kind> chat)",
    ),
    # ---- the chat id ---------------------------------------------------------------------------------
    TelegramRule(
        Refusal.SERVICE,
        frozenset({400}),
        r"group chat was upgraded to a supergroup chat",
        "the group became a supergroup: set {setting} to {migrate_to_chat_id}",
        f"{_BOTAPI} check_chat_access (parameters.migrate_to_chat_id)",
    ),
    TelegramRule(
        Refusal.SERVICE,
        frozenset({400, 403}),
        r"chat not found|\bPEER_ID_INVALID\b|\bCHANNEL_(PRIVATE|INVALID)\b|chat_id is empty|"
        r"group chat was deleted|group chat is deactivated",
        _CHAT_FIX,
        f"{_BOTAPI} ('Bad Request: chat not found'); https://core.telegram.org/api/errors",
    ),
    # ---- the token and the server ----------------------------------------------------------------------
    TelegramRule(
        Refusal.SERVICE,
        frozenset({401}),
        r"invalid token specified",
        _MALFORMED_FIX,
        "tdlib/telegram-bot-api telegram-bot-api/ClientManager.cpp send (a self-hosted server)",
    ),
    TelegramRule(
        Refusal.SERVICE,
        frozenset({401}),
        "",
        _TOKEN_FIX,
        "https://core.telegram.org/bots/api#making-requests; pyTelegramBotAPI#168",
    ),
    # api.telegram.org answers a malformed token (e.g. pasted with a 'bot' prefix) with 404 Not Found;
    # for the methods we call a 404 can mean nothing else (python-telegram-bot: InvalidToken for 404).
    TelegramRule(
        Refusal.SERVICE,
        frozenset({404}),
        "",
        _MALFORMED_FIX,
        "pyTelegramBotAPI#817; python-telegram-bot telegram/request/_baserequest.py",
    ),
    TelegramRule(
        Refusal.SERVICE,
        frozenset({421}),
        r"unallowed token",
        "this Bot API server does not serve this bot: check TELEGRAM_TOKEN and TELEGRAM_API_BASE_URL",
        "tdlib/telegram-bot-api telegram-bot-api/ClientManager.cpp (token_range_)",
    ),
    # an upload under the documented 50 MB refused by size: a proxy in front of the server (nginx
    # client_max_body_size) refuses every post alike
    TelegramRule(
        Refusal.SERVICE,
        frozenset({413}),
        "",
        "the Bot API server (or a proxy in front of it) refuses uploads of this size: raise its body "
        "limit, or check TELEGRAM_API_BASE_URL",
        "https://core.telegram.org/bots/api#sending-files (50 MB); nginx client_max_body_size",
    ),
    # ---- flood control -------------------------------------------------------------------------------
    TelegramRule(
        Refusal.TRANSIENT,
        frozenset({429}),
        "",
        "Telegram's flood control: retried after retry_after; a long wait stops the run until then",
        "tdlib/telegram-bot-api telegram-bot-api/Query.cpp set_retry_after_error; Client.cpp "
        "get_closing_error",
    ),
    # ---- the post itself -------------------------------------------------------------------------------
    TelegramRule(
        Refusal.PROMPT,
        frozenset({400}),
        r"\b(PHOTO_INVALID_DIMENSIONS|IMAGE_PROCESS_FAILED|PHOTO_SAVE_FILE_INVALID|PHOTO_EXT_INVALID|"
        r"PHOTO_INVALID)\b|file of size \d+ bytes is too big for a photo",
        "",
        f"https://core.telegram.org/bots/api#sendphoto (10 MB, width + height <= 10000, ratio <= 20); "
        f"{_TD} td/telegram/files/FileLoaderUtils.cpp ('File of size N bytes is too big for a photo; the "
        "maximum size is 10485760 bytes'); go-telegram-bot-api#600",
        fallback=AS_DOCUMENT,
    ),
    TelegramRule(
        Refusal.PROMPT,
        frozenset({400}),
        r"message caption is too long",
        "",
        f"{_TD} td/telegram/MessageContent.cpp ('Message caption is too long')",
        fallback=SHORTER_CAPTION,
    ),
    # ---- editMessageCaption / deleteMessage: where the message stands ---------------------------------
    TelegramRule(
        Refusal.PROMPT,
        frozenset({400}),
        r"message to (delete|edit) not found|\bMESSAGE_ID_INVALID\b",
        "",
        f"{_BOTAPI} check_message ('<message type> not found'); https://core.telegram.org/api/errors",
        fallback=GONE,
    ),
    TelegramRule(
        Refusal.PROMPT,
        frozenset({400}),
        r"message is not modified",
        "",
        f"{_BOTAPI} fail_query_with_error (MESSAGE_NOT_MODIFIED)",
        fallback=NOT_MODIFIED,
    ),
    TelegramRule(
        Refusal.PROMPT,
        frozenset({400}),
        r"message can't be deleted",
        "",
        f"{_TD} td/telegram/MessagesManager.cpp can_delete_channel_message (bots: 2 days; the rights); "
        f"{_BOTAPI} fail_query_with_error (MESSAGE_DELETE_FORBIDDEN)",
        fallback=NOT_DELETABLE,
    ),
    TelegramRule(
        Refusal.PROMPT,
        frozenset({400}),
        "",  # can't parse entities, message is too long, file must be non-empty, ...: about this post
        "",
        f"{_BOTAPI}",
    ),
)


_MESSAGE_ANSWERS: dict[str, type[PromptRejected]] = {
    GONE: MessageGone,
    NOT_MODIFIED: MessageNotModified,
    NOT_DELETABLE: MessageNotDeletable,
}


@dataclass(frozen=True)
class Answer:
    """What Telegram answered, as far as the classification needs it."""

    method: str
    status: int
    description: str = ""
    parameters: Mapping[str, Any] | None = None
    retry_after_header: str | None = None
    is_bot_api: bool = True  # False: the body was not the Bot API's JSON envelope

    def retry_after(self) -> float | None:
        params = self.parameters or {}
        for raw in (params.get("retry_after"), self.retry_after_header, _retry_in_text(self.description)):
            try:
                if raw is not None and float(raw) > 0:
                    return float(raw)
            except (TypeError, ValueError):
                continue
        return None

    def migrate_to(self) -> str | None:
        value = (self.parameters or {}).get("migrate_to_chat_id")
        return None if value is None else str(value)


def _retry_in_text(description: str) -> str | None:
    # Client.cpp get_retry_after_time reads the same number out of the text
    match = re.match(r"Too Many Requests: retry after (\d+)", description)
    return match.group(1) if match else None


def rule_for(answer: Answer) -> TelegramRule | None:
    """The documented rule an answer falls under (None for a success or a 5xx)."""
    if answer.migrate_to() is not None:
        return next(r for r in RULES if "upgraded to a supergroup" in r.pattern)
    if answer.status == 429 or (answer.retry_after() is not None and answer.status < 500):
        return next(r for r in RULES if 429 in r.statuses)
    found = first_rule(RULES, answer.status, answer.description)
    return found if isinstance(found, TelegramRule) else None


def classify(answer: Answer, *, repeatable: bool, chat_setting: str = "TELEGRAM_CHAT_ID") -> PipelineError:
    """The typed error for a refusal. ``repeatable``: the request may be sent again without risk of a
    second post (reads, notices, previews), so a 5xx is TRANSIENT rather than UNKNOWN."""
    method, status = answer.method, answer.status
    shown = _shown(answer.description) or f"HTTP {status}"
    if not answer.is_bot_api:
        return _not_bot_api(answer, repeatable)
    if status >= 500:
        if repeatable or re.search(r"Internal Server Error: restart", answer.description):
            return refuse(
                Refusal.TRANSIENT, f"Telegram {method}: {status} {shown}", service=SERVICE, status=status
            )
        return _uncertain(method, f"answered HTTP {status} ({shown}) after the request was sent", status)
    rule = rule_for(answer)
    if rule is None:
        # a success status without a result, or a status no rule lists: about this post
        return refuse(
            Refusal.PROMPT, f"Telegram {method}: {shown}", service=SERVICE, status=status, unknown=True
        )
    if rule.kind is Refusal.TRANSIENT:
        wait = answer.retry_after()
        # while a flood wait runs, every method of the bot gets the same answer (Client.cpp)
        detail = f"{shown} (Telegram holds every request of the bot until then)" if wait else shown
        return refuse(
            Refusal.TRANSIENT,
            f"Telegram {method}: rate limited ({status}): {detail}",
            service=SERVICE,
            status=status,
            retry_after=wait,
        )
    if rule.kind is Refusal.PROMPT:
        message = f"Telegram {method}: {shown}"
        if rule.fallback == AS_DOCUMENT:
            return PhotoRefused(message, service=SERVICE, status=status)
        if rule.fallback == SHORTER_CAPTION:
            return CaptionRefused(message, service=SERVICE, status=status)
        answer_class = _MESSAGE_ANSWERS.get(rule.fallback)
        if answer_class is not None:
            return answer_class(message, service=SERVICE, status=status)
        return refuse(Refusal.PROMPT, message, service=SERVICE, status=status, unknown=not rule.pattern)
    fix = rule.fix.format(setting=chat_setting, migrate_to_chat_id=answer.migrate_to() or "the new id")
    if status in (401, 404, 421):
        message = f"Telegram rejected the bot token ({status} {shown}): {fix}"
    else:
        message = f"Telegram {method}: {shown}. {fix[:1].upper()}{fix[1:]}"
    return refuse(rule.kind, message, service=SERVICE, status=status)


def classify_transport(
    method: str,
    *,
    reached_server: bool,
    timed_out: bool,
    repeatable: bool,
    detail: str,
    read_timeout_s: float,
) -> PipelineError:
    """A request that got no (complete) answer. ``detail`` is the exception's class name, never its text
    (requests puts the URL, and with it the token, into its messages)."""
    if not reached_server:
        what = "connect timed out" if timed_out else f"connection failed ({detail})"
        return refuse(Refusal.TRANSIENT, f"Telegram {method}: {what}", service=SERVICE)
    if repeatable:
        what = "no answer in time" if timed_out else f"connection failed ({detail})"
        return refuse(Refusal.TRANSIENT, f"Telegram {method}: {what}", service=SERVICE)
    if timed_out:
        return _uncertain(method, f"gave no answer within {read_timeout_s:g}s", None)
    return _uncertain(method, f"lost the connection before Telegram answered ({detail})", None)


def _uncertain(method: str, what: str, status: int | None) -> DeliveryUncertain:
    return DeliveryUncertain(
        f"Telegram {method}: {what}; the post may have gone through (the Bot API has no idempotency key "
        "for bots), so it is not retried automatically. Check the channel before running again",
        service=SERVICE,
        status=status,
    )


def _not_bot_api(answer: Answer, repeatable: bool) -> PipelineError:
    method, status = answer.method, answer.status
    if status == 429:
        return refuse(
            Refusal.TRANSIENT,
            f"Telegram {method}: rate limited (429)",
            service=SERVICE,
            status=status,
            retry_after=answer.retry_after(),
        )
    if 400 <= status < 500:
        rule = first_rule(RULES, status, "") if status == 413 else None
        fix = (
            rule.fix
            if rule is not None
            else "check TELEGRAM_API_BASE_URL: it must point at a Bot API server (https://api.telegram.org "
            "or a self-hosted telegram-bot-api)"
        )
        return refuse(
            Refusal.SERVICE,
            f"Telegram {method}: HTTP {status} without a Bot API answer: {fix}",
            service=SERVICE,
            status=status,
        )
    # a 5xx page from a proxy, or a 200 whose body is unreadable: the request was taken
    if repeatable:
        return refuse(
            Refusal.TRANSIENT,
            f"Telegram {method}: unreadable answer (HTTP {status})",
            service=SERVICE,
            status=status,
        )
    return _uncertain(method, f"answered HTTP {status} without a readable Bot API answer", status)


def _shown(description: str) -> str:
    text = redact(description).strip()
    text = text.removeprefix("Bad Request: ")
    return text[:TEXT_LIMIT]
