"""The methods that post: sendPhoto, sendDocument, sendMessage and sendMediaGroup, each checking in the
server's order (file, chat, rights, caption, size) before the post is delivered; an album's InputMedia
items are parsed and checked one by one, and a refused item fails the whole album by position."""

from __future__ import annotations

import json
from typing import Any

from image_pipeline.testing.emulators.telegram.chats import TelegramChats
from image_pipeline.testing.emulators.telegram.markup import visible_text
from image_pipeline.testing.emulators.telegram.state import _Outgoing
from image_pipeline.testing.emulators.telegram.uploads import TelegramUploads
from image_pipeline.testing.emulators.telegram.wire import (
    MAX_ALBUM_ITEMS,
    MAX_CAPTION_CHARS,
    MAX_TEXT_CHARS,
    AlbumItem,
    StoredFile,
    TelegramError,
    UploadedFile,
    _stringify,
    _to_bool,
)


class TelegramSends(TelegramChats, TelegramUploads):
    def _check_caption(self, params: dict[str, str]) -> str | None:
        caption = params.get("caption")
        if caption is None:
            return None
        plain = visible_text(caption, params.get("parse_mode"))
        if len(plain) > MAX_CAPTION_CHARS:
            raise TelegramError(400, "Bad Request: message caption is too long")
        return plain

    def _m_sendphoto(self, params: dict[str, str], files: dict[str, UploadedFile]) -> dict[str, Any]:
        upload, stored = self._resolve_file("photo", "photo", params, files)
        chat = self._require_chat(params)
        self._check_can_post(chat, "photo")
        caption = self._check_caption(params)
        if stored is not None:
            width, height = stored.width, stored.height
        else:
            if len(upload.data) > self.max_photo_bytes:
                raise self._photo_too_big(len(upload.data))
            width, height = self._photo_dimensions(upload.data)
        assert width is not None and height is not None
        file_id, unique_id, stored = self._store("photo", upload, width, height, stored)
        sizes = self._photo_sizes(file_id, unique_id, width, height, len(upload.data))
        extra: dict[str, Any] = {"photo": sizes}
        if caption:
            extra["caption"] = caption
        if _to_bool(params.get("has_spoiler")):
            extra["has_media_spoiler"] = True
        return self._deliver(chat, "sendPhoto", params, extra, upload, width, height)

    def _m_senddocument(self, params: dict[str, str], files: dict[str, UploadedFile]) -> dict[str, Any]:
        upload, stored = self._resolve_file("document", "document", params, files)
        chat = self._require_chat(params)
        self._check_can_post(chat, "document")
        caption = self._check_caption(params)
        if len(upload.data) > self.max_document_bytes:
            raise TelegramError(413, "Request Entity Too Large")
        if not upload.data:
            raise TelegramError(400, "Bad Request: file must be non-empty")
        width, height = self._try_dimensions(upload.data)
        file_id, unique_id, stored = self._store("document", upload, width, height, stored)
        extra: dict[str, Any] = {"document": self._document_object(upload, file_id, unique_id)}
        if caption:
            extra["caption"] = caption
        return self._deliver(chat, "sendDocument", params, extra, upload, width, height)

    def _m_sendmessage(self, params: dict[str, str], files: dict[str, UploadedFile]) -> dict[str, Any]:
        chat = self._require_chat(params)
        self._check_can_post(chat)
        plain = visible_text(params.get("text", ""), params.get("parse_mode"))
        if not plain.strip():
            raise TelegramError(400, "Bad Request: message text is empty")
        if len(plain) > MAX_TEXT_CHARS:
            raise TelegramError(400, "Bad Request: message is too long")
        return self._deliver(chat, "sendMessage", params, {"text": plain}, None, None, None)

    def _m_sendmediagroup(
        self, params: dict[str, str], files: dict[str, UploadedFile]
    ) -> list[dict[str, Any]]:
        # The order of checks is the server's: the Bot API parses "media" first, then resolves the chat,
        # then tdlib counts the items, checks each one and finally uploads them.
        raw = params.get("media", "")
        if not raw:
            raise TelegramError(400, 'Bad Request: parameter "media" is required')
        try:
            value = json.loads(raw)
        except ValueError as exc:
            raise TelegramError(400, "Bad Request: can't parse media JSON object") from exc
        if not isinstance(value, list):
            raise TelegramError(400, "Bad Request: expected an Array of InputMedia")
        items = [self._album_item(entry, files) for entry in value]
        chat = self._require_chat(params)
        for kind in sorted({i.kind for i in items}):
            self._check_can_post(chat, kind)
        if len(items) > MAX_ALBUM_ITEMS:
            raise TelegramError(400, "Bad Request: too many messages to send as an album")
        if not items:
            raise TelegramError(400, "Bad Request: there are no messages to send")
        captions = [
            self._check_caption(
                {k: v for k, v in (("caption", i.caption), ("parse_mode", i.parse_mode)) if v}
            )
            for i in items
        ]
        if len({i.kind for i in items}) > 1:
            # documents (and audio) group only with their own kind; the only mix the emulator can see
            raise TelegramError(400, "Bad Request: document can't be mixed with other media types")
        sizes: list[tuple[int | None, int | None]] = []
        for number, item in enumerate(items, 1):
            try:
                sizes.append(self._album_item_size(item))
            except TelegramError as err:
                if err.code != 400:
                    raise
                # the album is one upload: a photo the server refuses fails the whole request, named by position
                inner = err.description.removeprefix("Bad Request: ")
                # tdlib's own text goes in as tdlib wrote it, capitalised (Client.cpp
                # on_message_send_failed); only the outer message gets the lower-case first letter
                inner = inner[:1].upper() + inner[1:]
                raise TelegramError(
                    400, f'Bad Request: failed to send message #{number} with the error message "{inner}"'
                ) from err
        with self._lock:
            self._media_group_seq += 1
            group_seq = self._media_group_seq
        # real ids are long decimal strings; only an album of two or more gets one
        group_id = str(13_000_000_000_000_000 + group_seq) if len(items) > 1 else None
        entries: list[_Outgoing] = []
        for item, caption, (width, height) in zip(items, captions, sizes, strict=True):
            file_id, unique_id, _ = self._store(item.kind, item.upload, width, height, item.stored)
            extra: dict[str, Any] = {"media_group_id": group_id} if group_id else {}
            if item.kind == "photo":
                assert width is not None and height is not None
                extra["photo"] = self._photo_sizes(file_id, unique_id, width, height, len(item.upload.data))
            else:
                extra["document"] = self._document_object(item.upload, file_id, unique_id)
            if caption:
                extra["caption"] = caption
            if item.has_spoiler and item.kind == "photo":
                extra["has_media_spoiler"] = True
            item_params = {**params, "caption": item.caption, "parse_mode": item.parse_mode}
            entries.append(_Outgoing(item_params, extra, item.upload, width, height, group_id))
        return self._deliver_many(chat, "sendMediaGroup", params, entries)

    def _album_item(self, entry: Any, files: dict[str, UploadedFile]) -> AlbumItem:
        """One InputMedia, checked in the order ``Client::get_input_media`` checks it."""

        def bad(detail: str) -> TelegramError:
            return TelegramError(400, f"Bad Request: can't parse InputMedia: {detail}")

        if not isinstance(entry, dict):
            raise bad("expected an Object")
        caption, parse_mode = entry.get("caption"), entry.get("parse_mode")
        for name, field in (("caption", caption), ("parse_mode", parse_mode), ("media", entry.get("media"))):
            if field is not None and (isinstance(field, bool) or not isinstance(field, str | int | float)):
                raise bad(f'Field "{name}" must be of type String')
        caption = None if caption is None else str(caption)
        parse_mode = None if parse_mode is None else str(parse_mode)
        if caption:
            try:
                visible_text(caption, parse_mode)
            except TelegramError as err:
                # tdlib nests the parser's message, capitalised, inside the InputMedia one
                detail = err.description.removeprefix("Bad Request: ")
                raise bad(detail[:1].upper() + detail[1:]) from err
        media = str(entry.get("media") or "").strip()
        upload: UploadedFile | None = None
        if media.startswith("attach://"):
            upload = files.get(media[len("attach://") :])
        if upload is None and (not media or media.startswith("attach://")):
            raise bad("media not found")
        kind = entry.get("type")
        if kind is None:
            raise bad('Can\'t find field "type"')
        kind = str(kind)
        if kind == "animation":
            raise bad('type "animation" can\'t be used in sendMediaGroup')
        if kind not in ("photo", "document", "video", "audio"):
            raise bad(f'type "{kind}" is unsupported')
        if kind not in ("photo", "document"):
            # valid on the real server; the pipeline never sends them, so the emulator does not model them
            raise TelegramError(400, f'Bad Request: type "{kind}" is not emulated')
        stored: StoredFile | None = None
        if upload is None:
            # a file_id (or URL) instead of an upload, as sendPhoto accepts
            stored = self._files.get(media)
            if stored is None:
                raise TelegramError(400, "Bad Request: wrong file identifier/HTTP URL specified")
            if stored.kind != kind:
                raise TelegramError(
                    400, f"Bad Request: type of file mismatch, can't use {stored.kind} as {kind}"
                )
            upload = UploadedFile(stored.filename, stored.content_type, stored.data)
        return AlbumItem(
            kind, upload, stored, caption, parse_mode, _to_bool(_stringify(entry.get("has_spoiler", "")))
        )

    def _album_item_size(self, item: AlbumItem) -> tuple[int | None, int | None]:
        """The same limits sendPhoto / sendDocument enforce; raises their errors."""
        if item.kind == "photo":
            if item.stored is not None:
                return item.stored.width, item.stored.height
            if len(item.upload.data) > self.max_photo_bytes:
                raise self._photo_too_big(len(item.upload.data))
            return self._photo_dimensions(item.upload.data)
        if len(item.upload.data) > self.max_document_bytes:
            raise TelegramError(413, "Request Entity Too Large")
        if not item.upload.data:
            raise TelegramError(400, "Bad Request: file must be non-empty")
        return self._try_dimensions(item.upload.data)
