"""What is sent for an image: the photo as it is, a recompressed photo, or the file as a document.

Telegram refuses photos over its limits (``domain.telegram_limits``); deciding here, before the send, makes
the content check see exactly what the publisher will send.
"""

from __future__ import annotations

import io
from collections.abc import Sequence
from dataclasses import dataclass

from PIL import Image

from image_pipeline.domain.errors import PromptRejected
from image_pipeline.domain.telegram_limits import (
    ALBUM_MAX_IMAGES,
    DOCUMENT_MAX_BYTES,
    PHOTO_MAX_BYTES,
    PHOTO_MAX_RATIO,
    PHOTO_MAX_SIDE_SUM,
)


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


def check_album(pngs: Sequence[bytes]) -> None:
    """Refuse, before any request, an album Telegram could not take as one post."""
    if not pngs:
        raise ValueError("an album needs at least one image")
    if len(pngs) > ALBUM_MAX_IMAGES:
        raise ValueError(
            f"an album holds at most {ALBUM_MAX_IMAGES} images (Telegram's sendMediaGroup limit), "
            f"got {len(pngs)}; split the prompt's images into several posts"
        )


def prepare_album(pngs: Sequence[bytes], prompt_id: str) -> list[PreparedUpload]:
    """Each image fitted like ``prepare_upload``; one image that can only be a document makes all documents.

    Telegram groups documents "only with messages of the same type" (sendMediaGroup), so a photo cannot sit
    beside a document in one album. Sending the whole album as documents keeps it one post, in order, with
    every image untouched; splitting it would turn one prompt into two posts.
    """
    if len(pngs) == 1:
        return [prepare_upload(pngs[0], prompt_id)]
    uploads = [prepare_upload(png, f"{prompt_id}-{i}") for i, png in enumerate(pngs, 1)]
    for i, upload in enumerate(uploads, 1):
        if upload.method == "sendDocument":
            why = upload.note.removeprefix("sent as a document: ")
            return _album_as_documents(pngs, prompt_id, f"image {i}: {why}")
    return uploads


def _album_as_documents(pngs: Sequence[bytes], prompt_id: str, why: str) -> list[PreparedUpload]:
    if len(pngs) == 1:
        return [_as_document(pngs[0], prompt_id, why)]
    docs = [_as_document(png, f"{prompt_id}-{i}", why) for i, png in enumerate(pngs, 1)]
    # one note for the post, not one per image
    return [docs[0], *(PreparedUpload(d.method, d.data, d.filename, d.content_type, "") for d in docs[1:])]


def _album_note(uploads: Sequence[PreparedUpload]) -> str:
    if len(uploads) == 1:
        return uploads[0].note
    return "; ".join(
        u.note if u.method == "sendDocument" else f"image {i}: {u.note}"
        for i, u in enumerate(uploads, 1)
        if u.note
    )
