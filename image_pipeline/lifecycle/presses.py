"""What a press of a preview card's button does: Approve, Regenerate, Hold or Skip, from an admin only,
on the card that shows the row's current text only, decided once.

A button's callback data is ``<action>|<prompt id>|<tag>`` (Telegram allows 1-64 bytes): the tag is an
HMAC of the prompt id, the row's fingerprint and the action, with a key derived from the bot token, so
data nobody signed (forged) or signed for another text (the row was edited since) changes nothing. The
ledger (``ledger_cards.py``) knows each card: a press on a card that was replaced (Regenerate sent a new
one) or already decided changes nothing either. The decision is recorded before anything changes; the
status word and the card's edit after it are idempotent, so a press seen twice acts once.

What each button does to the row: Approve writes APPROVE (the next run posts exactly the previewed
image(s), lifecycle/approval.py); Regenerate forgets the preview and writes PREVIEW (the next run
generates anew with a new random seed; a row that fixes its seed is told to change it); Hold writes HOLD;
Skip writes SKIP (held like HOLD, kept in the queue with its preview: a person may still change it).
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import logging
from dataclasses import dataclass
from typing import Any

from image_pipeline.domain.statuses import APPROVE, HOLD, PREVIEW, SKIP
from image_pipeline.lifecycle.ledger import Ledger
from image_pipeline.lifecycle.ledger_cards import Card, CardBook
from image_pipeline.services.publisher.interface import Publisher
from image_pipeline.services.sheets import PromptSheet

log = logging.getLogger("image_pipeline.presses")

# action letter -> (button label, status word, what the card says afterwards)
ACTIONS = {
    "a": ("Approve", APPROVE, "Approved"),
    "r": ("Regenerate", PREVIEW, "Regenerating"),
    "h": ("Hold", HOLD, "Held"),
    "s": ("Skip", SKIP, "Skipped"),
}
RUNS_FOR = {"a", "r"}  # the presses that start work: the sensor asks for a run of the prompt
MAX_DATA_BYTES = 64  # Telegram's limit on callback_data
_TAG_CHARS = 12  # 72 bits of HMAC: a forger's odds are nil, and a 50-character prompt id still fits


@dataclass(frozen=True)
class PressOutcome:
    update_id: int
    prompt_id: str
    action: str  # "a", "r", "h", "s", or "" when the press was refused
    note: str  # what happened, for the sensor's log
    start_run: bool = False


def _tag(key: bytes, prompt_id: str, fingerprint: str, action: str) -> str:
    mac = hmac.new(key, f"{prompt_id}\x1f{fingerprint}\x1f{action}".encode(), hashlib.sha256).digest()
    return base64.urlsafe_b64encode(mac).decode()[:_TAG_CHARS]


def card_buttons(publisher: Publisher, prompt_id: str, fingerprint: str) -> list[tuple[str, str]]:
    """The (label, callback data) of a card's buttons; none when buttons are off or the id is too long
    to fit Telegram's 64 bytes with its tag (the row is then approved by typing APPROVE)."""
    key = publisher.card_key()
    if not key or len(prompt_id.encode()) + _TAG_CHARS + 3 > MAX_DATA_BYTES:
        return []
    return [
        (label, f"{action}|{prompt_id}|{_tag(key, prompt_id, fingerprint, action)}")
        for action, (label, _word, _done) in ACTIONS.items()
    ]


def record_card(book: Ledger, chat_id: str, message_id: str, prompt_id: str, fingerprint: str) -> None:
    CardBook(book).record(chat_id, message_id, prompt_id, fingerprint)


def _who(user: dict[str, Any]) -> str:
    if user.get("username"):
        return f"@{user['username']}"
    return str(user.get("first_name") or user.get("id", "someone"))


def handle_presses(
    book: Ledger, prompt_sheet: PromptSheet, publisher: Publisher, updates: list[dict[str, Any]]
) -> list[PressOutcome]:
    """Act on the ``callback_query`` updates among ``updates``, in order; one outcome per press."""
    presses = [u for u in updates if isinstance(u.get("callback_query"), dict)]
    if not presses:
        return []
    snapshot = prompt_sheet.read_queue()
    return [_handle(book, prompt_sheet, publisher, snapshot, u) for u in presses]


def _handle(
    book: Ledger, prompt_sheet: PromptSheet, publisher: Publisher, snapshot: Any, update: dict[str, Any]
) -> PressOutcome:
    update_id = int(update.get("update_id", 0))
    query = update["callback_query"]
    user = query.get("from") or {}
    who = _who(user)
    message = query.get("message") or {}
    chat_id = str((message.get("chat") or {}).get("id", ""))
    message_id = str(message.get("message_id", ""))

    def refuse(text: str, note: str, prompt_id: str = "") -> PressOutcome:
        publisher.answer_press(query_id=str(query.get("id", "")), text=text)
        log.warning("press %s by %s (%s) ignored: %s", update_id, who, user.get("id"), note)
        return PressOutcome(update_id, prompt_id, "", f"ignored: {note}")

    if user.get("id") not in publisher.admins():
        return refuse("Not allowed: only the pipeline's admins can decide.", f"{who} is not an admin")
    action, _, rest = str(query.get("data", "")).partition("|")
    prompt_id, _, tag = rest.partition("|")
    cards = CardBook(book)
    card = cards.get(chat_id, message_id) if action in ACTIONS else None
    key = publisher.card_key()
    if (
        card is None
        or card.prompt_id != prompt_id
        or not key
        or not hmac.compare_digest(tag, _tag(key, prompt_id, card.fingerprint, action))
    ):
        return refuse("This button is not valid.", f"forged or unknown data {query.get('data')!r}", prompt_id)
    latest = cards.latest(card.prompt_id, card.fingerprint)
    if latest is not None and latest.message_id != card.message_id:
        return refuse("This preview was replaced by a newer one.", "a stale card (replaced)", prompt_id)
    if card.outcome:
        return refuse(f"Already decided: {card.outcome}.", f"already decided ({card.outcome})", prompt_id)
    row = snapshot.by_id().get(prompt_id)
    if row is None:
        return refuse("This prompt is no longer in the queue.", "the row is gone", prompt_id)
    if row.fingerprint() != card.fingerprint:
        return refuse("The row was edited since this preview.", "a stale card (row edited)", prompt_id)
    label, word, done = ACTIONS[action]
    if action == "r" and row.params.get("seed", "").strip():
        return refuse(
            "This row fixes its seed: change it in the sheet for a new image.", "seed fixed", prompt_id
        )
    decision = f"{done} by {who}"
    stood = cards.settle(card, decision)  # the intent: from here on the press has decided
    if stood != decision:
        return refuse(f"Already decided: {stood}.", f"already decided ({stood})", prompt_id)
    publisher.answer_press(query_id=str(query.get("id", "")), text=f"{done}.")
    return _apply(book, prompt_sheet, publisher, snapshot, update_id, card, action, word, decision, message)


def _apply(
    book: Ledger,
    prompt_sheet: PromptSheet,
    publisher: Publisher,
    snapshot: Any,
    update_id: int,
    card: Card,
    action: str,
    word: str,
    decision: str,
    message: dict[str, Any],
) -> PressOutcome:
    if action == "r":
        # the preview is forgotten, not the images: the next run makes a new one with a new seed
        book.update(card.prompt_id, card.fingerprint, preview_state=None, preview_images="")
    prompt_sheet.write_statuses({card.prompt_id: word}, snapshot)
    has_image = "text" not in message  # a photo card has a caption; an album's card is a text message
    shown = str(message.get("caption") if has_image else message.get("text") or "")
    publisher.close_card(
        chat_id=card.chat_id,
        message_id=card.message_id,
        text=f"{shown}\n\n{decision}".strip(),
        has_image=has_image,
    )
    log.info("press %s: %s %s", update_id, card.prompt_id, decision)
    return PressOutcome(update_id, card.prompt_id, action, decision, start_run=action in RUNS_FOR)
