"""A request's arguments and files: the query, form, JSON and multipart/form-data bodies the Bot API
accepts (``parse_multipart``, ``_parse_params``), resolving a file argument (an upload, ``attach://``, or
an earlier file_id), the photo checks (size, dimensions, decodable), and the file store with the
downscaled copies Telegram keeps of every photo."""

from __future__ import annotations

import base64
import hashlib
import io
import json
import mimetypes
from email.message import Message
from email.parser import BytesHeaderParser
from typing import Any
from urllib.parse import parse_qs

from PIL import Image

from image_pipeline.testing.emulators.base import Request
from image_pipeline.testing.emulators.telegram.state import TelegramState
from image_pipeline.testing.emulators.telegram.wire import (
    MAX_PHOTO_RATIO,
    MAX_PHOTO_SIDE_SUM,
    StoredFile,
    TelegramError,
    UploadedFile,
    _stringify,
)

# Telegram keeps a few downscaled copies of every photo; these are the long-side limits of the
# "s", "m", "x" and "y" sizes. Photos are recompressed to at most 1280 px on the long side.
_PHOTO_SIZE_STEPS = (90, 320, 800, 1280)


def parse_multipart(body: bytes, content_type: str) -> tuple[dict[str, str], dict[str, UploadedFile]]:
    """Split a multipart/form-data body into text fields and file parts (parts with a filename)."""
    ct = Message()
    ct["content-type"] = content_type
    boundary = ct.get_param("boundary")
    if not isinstance(boundary, str) or not boundary:
        raise TelegramError(400, "Bad Request: can't parse multipart/form-data: no boundary")
    fields: dict[str, str] = {}
    files: dict[str, UploadedFile] = {}
    # every delimiter is CRLF "--" boundary; prefixing a CRLF makes the first one look like the rest,
    # and splitting on the full delimiter leaves each part's content byte-exact
    chunks = (b"\r\n" + body).split(b"\r\n--" + boundary.encode("latin-1"))
    for chunk in chunks[1:]:
        if chunk.startswith(b"--"):
            break
        _, _, part = chunk.partition(b"\r\n")
        head, sep, content = part.partition(b"\r\n\r\n")
        if not sep:
            continue
        headers = BytesHeaderParser().parsebytes(head + b"\r\n\r\n")
        name = headers.get_param("name", header="content-disposition")
        if not isinstance(name, str):
            continue
        filename = headers.get_filename()
        if filename is None:
            fields[name] = content.decode("utf-8", errors="replace")
        else:
            files[name] = UploadedFile(filename, headers.get_content_type(), content)
    return fields, files


class TelegramUploads(TelegramState):
    def _parse_params(self, request: Request) -> tuple[dict[str, str], dict[str, UploadedFile]]:
        params = {k: v[0] for k, v in request.query.items() if v}
        files: dict[str, UploadedFile] = {}
        ctype = request.header("content-type").lower()
        if not request.body:
            return params, files
        if ctype.startswith("multipart/form-data"):
            fields, files = parse_multipart(request.body, request.header("content-type"))
            params.update(fields)
        elif ctype.startswith("application/json"):
            try:
                payload = json.loads(request.body.decode("utf-8"))
            except (UnicodeDecodeError, ValueError) as exc:
                raise TelegramError(400, "Bad Request: can't parse JSON object") from exc
            if not isinstance(payload, dict):
                raise TelegramError(400, "Bad Request: JSON object expected")
            params.update({k: _stringify(v) for k, v in payload.items() if v is not None})
        elif ctype.startswith("application/x-www-form-urlencoded") or not ctype:
            try:
                form = parse_qs(request.body.decode("utf-8"), keep_blank_values=True)
            except UnicodeDecodeError as exc:
                raise TelegramError(400, "Bad Request: request must be encoded in UTF-8") from exc
            params.update({k: v[0] for k, v in form.items() if v})
        return params, files

    def _resolve_file(
        self, field: str, kind: str, params: dict[str, str], files: dict[str, UploadedFile]
    ) -> tuple[UploadedFile, StoredFile | None]:
        """The uploaded part, an ``attach://`` reference, or a previously returned file_id."""
        if field in files:
            return files[field], None
        ref = params.get(field, "").strip()
        if ref.startswith("attach://") and ref[9:] in files:
            return files[ref[9:]], None
        if not ref:
            raise TelegramError(400, f"Bad Request: there is no {kind} in the request")
        stored = self._files.get(ref)
        if stored is None:
            raise TelegramError(400, "Bad Request: wrong file identifier/HTTP URL specified")
        if stored.kind != kind:
            raise TelegramError(400, f"Bad Request: type of file mismatch, can't use {stored.kind} as {kind}")
        return UploadedFile(stored.filename, stored.content_type, stored.data), stored

    def _photo_too_big(self, size: int) -> TelegramError:
        # td/telegram/files/FileLoaderUtils.cpp check_local_location ("File of size N bytes is too big
        # for a photo; the maximum size is 10485760 bytes"), first letter lower-cased by the Bot API
        return TelegramError(
            400,
            f"Bad Request: file of size {size} bytes is too big for a photo; the maximum size is "
            f"{self.max_photo_bytes} bytes",
        )

    @staticmethod
    def _document_object(upload: UploadedFile, file_id: str, unique_id: str) -> dict[str, Any]:
        mime = upload.content_type
        if not mime or mime == "application/octet-stream":
            mime = mimetypes.guess_type(upload.filename)[0] or "application/octet-stream"
        return {
            "file_name": upload.filename,
            "mime_type": mime,
            "file_id": file_id,
            "file_unique_id": unique_id,
            "file_size": len(upload.data),
        }

    @staticmethod
    def _photo_dimensions(data: bytes) -> tuple[int, int]:
        try:
            img = Image.open(io.BytesIO(data))
            width, height = img.size
        except Exception as exc:
            raise TelegramError(400, "Bad Request: IMAGE_PROCESS_FAILED") from exc
        # checked on the header before decoding, so an oversized test image costs nothing to reject
        if width + height > MAX_PHOTO_SIDE_SUM or max(width, height) > MAX_PHOTO_RATIO * min(width, height):
            raise TelegramError(400, "Bad Request: PHOTO_INVALID_DIMENSIONS")
        try:
            img.load()
        except Exception as exc:  # truncated or corrupt pixel data
            raise TelegramError(400, "Bad Request: IMAGE_PROCESS_FAILED") from exc
        return width, height

    @staticmethod
    def _try_dimensions(data: bytes) -> tuple[int | None, int | None]:
        try:
            with Image.open(io.BytesIO(data)) as img:
                return img.size
        except Exception:
            return None, None

    def _store(
        self,
        kind: str,
        upload: UploadedFile,
        width: int | None,
        height: int | None,
        existing: StoredFile | None,
    ) -> tuple[str, str, StoredFile]:
        with self._lock:
            self._file_seq += 1
            seq = self._file_seq
        digest = hashlib.sha256(upload.data).digest()
        unique_id = existing.file_unique_id if existing else "AQAD" + _b64(digest[:9])
        # the real prefixes: photos' file_ids start with "AgAC", documents' with "BQAC"
        prefix = "AgACAgIAAxkDAAI" if kind == "photo" else "BQACAgIAAxkDAAI"
        file_id = prefix + _b64(hashlib.sha256(digest + seq.to_bytes(8, "big")).digest()[:48])
        stored = existing or StoredFile(
            kind, upload.data, upload.filename, upload.content_type, width, height, unique_id
        )
        with self._lock:
            self._files[file_id] = stored
        return file_id, unique_id, stored

    def _photo_sizes(
        self, file_id: str, unique_id: str, width: int, height: int, size: int
    ) -> list[dict[str, Any]]:
        sizes: list[dict[str, Any]] = []
        longest = max(width, height)
        seen: set[tuple[int, int]] = set()
        for step, letter in zip(_PHOTO_SIZE_STEPS, "smxy", strict=True):
            scale = min(1.0, step / longest)
            w, h = max(1, round(width * scale)), max(1, round(height * scale))
            if (w, h) in seen:
                break
            seen.add((w, h))
            # each size is its own file on Telegram; the suffix keeps the ids distinct but resolvable
            size_id = f"{file_id}{letter}"
            with self._lock:
                self._files[size_id] = self._files[file_id]
            sizes.append(
                {
                    "file_id": size_id,
                    "file_unique_id": f"{unique_id}{letter}",
                    "file_size": max(1, int(size * (w * h) / (width * height))),
                    "width": w,
                    "height": h,
                }
            )
            if scale == 1.0:
                break
        return sizes


def _b64(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).decode("ascii").rstrip("=")
