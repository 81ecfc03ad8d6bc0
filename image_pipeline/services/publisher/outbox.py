"""The local outbox: posts written to a folder (JSON lines and PNG files) with a gallery page, for the
embedded default with no Telegram credentials."""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
from collections.abc import Iterator, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from pydantic import Field

from image_pipeline.domain.checks import Check, fail, ok
from image_pipeline.domain.records import PostReceipt
from image_pipeline.domain.redact import redact
from image_pipeline.domain.retractions import DELETED, EDITED, GONE, UNCHANGED
from image_pipeline.domain.uploads import _album_as_documents, _album_note, check_album, prepare_album
from image_pipeline.services.files import atomic_write
from image_pipeline.services.publisher import gallery
from image_pipeline.services.publisher.interface import Publisher
from image_pipeline.services.publisher.refusals import MessageGone
from image_pipeline.services.publisher.telegram import TELEGRAM


# ---------------------------------------------------------------------------------------------------
# Local outbox
# ---------------------------------------------------------------------------------------------------
class LocalOutbox(Publisher):
    """Embedded default: each post is an image file plus a line in posts.jsonl, shown in index.html."""

    folder: str = Field(description="Folder for images/, posts.jsonl, notices.jsonl and index.html.")

    def describe(self) -> str:
        return f"local outbox {self.folder}"

    def preflight(self) -> list[Check]:
        return [*self.caption_checks(), *self._folder_checks()]

    def _folder_checks(self) -> list[Check]:
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

    def publish(self, *, prompt_id: str, png: bytes, caption: str, silent: bool = False) -> PostReceipt:
        return self._publish(prompt_id, [png], caption, silent)

    def publish_album(
        self, *, prompt_id: str, pngs: list[bytes], caption: str, silent: bool = False
    ) -> PostReceipt:
        check_album(pngs)
        return self._publish(prompt_id, list(pngs), caption, silent)

    def publish_original(
        self, *, prompt_id: str, pngs: list[bytes], caption: str = "", silent: bool = False
    ) -> PostReceipt:
        check_album(pngs)
        documents = _album_as_documents(pngs, prompt_id, "the original PNG")
        return self._publish(prompt_id, list(pngs), caption, silent, documents)

    def _publish(
        self, prompt_id: str, pngs: list[bytes], caption: str, silent: bool = False, uploads: Any = None
    ) -> PostReceipt:
        uploads = uploads or prepare_album(pngs, prompt_id)
        with self._locked():
            posts = self.posts()
            first = _last_message_id(posts) + 1
            ids = [str(first + i) for i in range(len(uploads))]
            files = [
                self._store(f"{int(m):05d}-{u.filename}", u.data) for m, u in zip(ids, uploads, strict=True)
            ]
            post: dict[str, Any] = {
                "message_id": ids[0],
                "chat_id": "outbox",
                "prompt_id": prompt_id,
                "caption": caption,
                "file": files[0],  # what readers of single-image records look at
                "method": uploads[0].method,
                "note": _album_note(uploads),
                "date": _now(),
            }
            if len(uploads) > 1:
                post.update(method="sendMediaGroup", files=files, message_ids=ids)
            if silent:
                post["disable_notification"] = True
            _append_jsonl(self.root / "posts.jsonl", post)
            posts.append(post)
            self._write_gallery(posts)
        return PostReceipt(
            "outbox",
            ids[0],
            str(post["method"]),
            (self.root / "index.html").as_uri(),
            sum(len(u.data) for u in uploads),
            str(post["note"]),
            tuple(ids),
        )

    def preview(
        self, *, prompt_id: str, pngs: list[bytes], caption: str, buttons: Sequence[tuple[str, str]] = ()
    ) -> PostReceipt:
        """A notice carrying the image(s): the gallery shows it as a PREVIEW card, never as a post."""
        check_album(pngs)
        uploads = prepare_album(pngs, prompt_id)
        with self._locked():
            number = len(self.notices()) + 1
            files = [self._store(f"preview-{number:05d}-{u.filename}", u.data, fresh=True) for u in uploads]
            method, note = (
                (uploads[0].method if len(uploads) == 1 else "sendMediaGroup"),
                _album_note(uploads),
            )
            notice = {
                "date": _now(),
                "kind": "preview",
                "prompt_id": prompt_id,
                "text": redact(caption),
                "files": files,
                "method": method,
                "note": note,
            }
            _append_jsonl(self.root / "notices.jsonl", notice)
            self._write_gallery(self.posts())
        # previews are notices, outside the channel's numbering
        ids = tuple(f"preview-{number}-{i}" for i in range(1, len(uploads) + 1))
        return PostReceipt(
            "notices",
            ids[0],
            method,
            (self.root / "index.html").as_uri(),
            sum(len(u.data) for u in uploads),
            note,
            ids,
        )

    def edit_caption(self, *, chat_id: str, message_id: str, caption: str) -> str:
        """The post's record gets the new caption (an album's is its first message's, as in Telegram)."""
        with self._locked():
            posts = self.posts()
            post = _live_post(posts, message_id)
            if post is None or str(post["message_id"]) != str(message_id):
                raise MessageGone(f"outbox: message {message_id} is not in the outbox", service="outbox")
            if post.get("caption") == caption:
                return UNCHANGED
            post["caption"] = caption
            post["edit_date"] = _now()
            self._rewrite(posts)
        return EDITED

    def delete_message(self, *, chat_id: str, message_id: str) -> str:
        """The message leaves the gallery; its record stays, marked, so ids are never handed out twice."""
        with self._locked():
            posts = self.posts()
            post = _live_post(posts, message_id)
            if post is None:
                return GONE
            gone = [*post.get("deleted_ids", []), str(message_id)]
            post["deleted_ids"] = gone
            if set(gone) >= {str(m) for m in post.get("message_ids") or [post["message_id"]]}:
                post["deleted"] = True
            self._rewrite(posts)
        return DELETED

    def _rewrite(self, posts: list[dict[str, Any]]) -> None:
        body = "".join(json.dumps(p, ensure_ascii=False) + "\n" for p in posts)
        atomic_write(self.root / "posts.jsonl", body.encode())
        self._write_gallery(posts)

    def _store(self, name: str, data: bytes, *, fresh: bool = False) -> str:
        """Write an image under images/; ``fresh`` never overwrites an existing file. Returns its path
        relative to the outbox folder, as records and the gallery use it."""
        images = self.root / "images"
        images.mkdir(exist_ok=True)
        path = images / name
        bump = 1
        while fresh and path.exists():
            bump += 1
            path = images / f"{Path(name).stem}-{bump}{Path(name).suffix}"
        atomic_write(path, data)
        return f"images/{path.name}"

    def notify(self, text: str) -> bool:
        with self._locked():
            notice = {"date": _now(), "text": redact(text)}
            _append_jsonl(self.root / "notices.jsonl", notice)
            self._write_gallery(self.posts())
        return True

    def _write_gallery(self, posts: list[dict[str, Any]]) -> None:
        # the whole page again on every post and notice: about 10 ms at 1000 entries (gallery.py)
        gallery.write(self.root, [p for p in posts if not p.get("deleted")], self.notices())


def _live_post(posts: list[dict[str, Any]], message_id: str) -> dict[str, Any] | None:
    """The post that holds ``message_id`` and has not had it deleted."""
    for post in posts:
        ids = {str(m) for m in post.get("message_ids") or [post["message_id"]]}
        if str(message_id) in ids and str(message_id) not in post.get("deleted_ids", []):
            return post
    return None


def _now() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _last_message_id(posts: list[dict[str, Any]]) -> int:
    # an album record holds several ids; its message_id is only the first
    return max(
        (int(m) for p in posts for m in [p["message_id"], *p.get("message_ids", ())]),
        default=0,
    )


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
