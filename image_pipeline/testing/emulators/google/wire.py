"""How a request reads on the wire, before any state is touched: which endpoint a method and path are
(``_classify``, ``_RouteInfo``, the HTML 404 for anything else), query parameters, Google field masks
(``fields=``), Drive's ``q`` language, and RFC 3339 times and base64url as the APIs write them.
"""

from __future__ import annotations

import base64
import re
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any
from urllib.parse import unquote

from image_pipeline.testing.emulators.base import Request


def _rfc3339(ms: int) -> str:
    stamp = datetime.fromtimestamp(ms / 1000, UTC)
    return stamp.strftime("%Y-%m-%dT%H:%M:%S.") + f"{ms % 1000:03d}Z"


def _b64url_decode(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def _parse_fields(text: str) -> dict[str, Any]:
    """A Google field mask ("kind,files(id,name)", "sheets.properties") as a nested dict; {} = whole value."""
    tokens = re.findall(r"[^,()./\s]+|[,()./]", text)
    pos = 0

    def parse_seq() -> dict[str, Any]:
        nonlocal pos
        tree: dict[str, Any] = {}
        while pos < len(tokens) and tokens[pos] != ")":
            if tokens[pos] == ",":
                pos += 1
                continue
            parse_path(tree)
        return tree

    def parse_path(tree: dict[str, Any]) -> None:
        nonlocal pos
        sub = tree.setdefault(tokens[pos], {})
        pos += 1
        if pos < len(tokens) and tokens[pos] in (".", "/") and pos + 1 < len(tokens):
            pos += 1
            parse_path(sub)
        elif pos < len(tokens) and tokens[pos] == "(":
            pos += 1
            sub.update(parse_seq())
            pos += 1  # the closing parenthesis

    return parse_seq()


def _apply_fields(value: Any, tree: dict[str, Any]) -> Any:
    if not tree or "*" in tree:
        return value
    if isinstance(value, list):
        return [_apply_fields(v, tree) for v in value]
    if isinstance(value, dict):
        return {k: _apply_fields(v, tree[k]) for k, v in value.items() if k in tree}
    return value


def _flag(request: Request, name: str, default: bool = False) -> bool:
    values = request.query.get(name)
    if not values:
        return default
    return values[0].strip().lower() == "true"


def _param(request: Request, name: str, default: str | None = None) -> str | None:
    values = request.query.get(name)
    return values[0] if values else default


_Q_TOKEN = re.compile(
    r"""\s*(?:(?P<str>'(?:[^'\\]|\\.)*'|"(?:[^"\\]|\\.)*")|(?P<op>!=|=|<=|>=|<|>)|(?P<word>[A-Za-z_][\w.]*))"""
)


def _unescape_q(literal: str) -> str:
    return re.sub(r"\\(.)", r"\1", literal[1:-1])


def _parse_drive_q(q: str) -> list[tuple[str, str, Any]]:
    """Drive ``q`` as (field, op, value) clauses joined by ``and``; raises ValueError on anything else."""
    tokens: list[tuple[str, str]] = []
    pos = 0
    q = q.strip()
    while pos < len(q):
        m = _Q_TOKEN.match(q, pos)
        if not m or m.end() == pos:
            raise ValueError(q)
        pos = m.end()
        kind = m.lastgroup or ""
        tokens.append((kind, m.group(kind)))
        while pos < len(q) and q[pos].isspace():
            pos += 1
    clauses: list[tuple[str, str, Any]] = []
    i = 0
    while i < len(tokens):
        a, b, c = (tokens[i : i + 3] + [("", ""), ("", "")])[:3]
        if a[0] == "word" and b[0] == "op" and c[0] in ("str", "word"):
            value: Any = _unescape_q(c[1]) if c[0] == "str" else c[1].lower()
            if c[0] == "word" and value not in ("true", "false"):
                raise ValueError(q)
            clauses.append((a[1], b[1], value))
        elif a[0] == "word" and b == ("word", "contains") and c[0] == "str":
            clauses.append((a[1], "contains", _unescape_q(c[1])))
        elif a[0] == "str" and b == ("word", "in") and c[0] == "word":
            clauses.append((c[1], "in", _unescape_q(a[1])))
        else:
            raise ValueError(q)
        i += 3
        if i < len(tokens):
            if tokens[i] != ("word", "and"):
                raise ValueError(q)
            i += 1
            if i >= len(tokens):
                raise ValueError(q)
    return clauses


_NOT_FOUND_HTML = (
    "<!DOCTYPE html>\n<html lang=en>\n  <meta charset=utf-8>\n  <title>Error 404 (Not Found)!!1</title>\n"
    "  <p><b>404.</b> <ins>That\u2019s an error.</ins>\n  <p>The requested URL <code>{path}</code> was not "
    "found on this server.  <ins>That\u2019s all we know.</ins>\n"
)


@dataclass(frozen=True)
class _RouteInfo:
    endpoint: str
    spreadsheet_id: str = ""
    range_text: str = ""


def _classify(method: str, path: str) -> _RouteInfo | None:
    if path == "/token":
        return _RouteInfo("token") if method == "POST" else None
    if path.startswith("/drive/v3/files"):
        rest = path[len("/drive/v3/files") :]
        if method != "GET":
            return None
        if rest in ("", "/"):
            return _RouteInfo("drive.files.list")
        if rest.startswith("/") and "/" not in rest[1:]:
            return _RouteInfo("drive.files.get", unquote(rest[1:]))
        return None
    if not path.startswith("/v4/spreadsheets/"):
        return None
    rest = path[len("/v4/spreadsheets/") :]
    head, slash, tail = rest.partition("/")
    if not slash:
        sid, colon, verb = head.partition(":")
        if not colon and method == "GET":
            return _RouteInfo("sheets.get", unquote(sid))
        if verb == "batchUpdate" and method == "POST":
            return _RouteInfo("sheets.batchUpdate", unquote(sid))
        return None
    sid = unquote(head)
    if tail.startswith("values:"):
        verb = tail[len("values:") :]
        table = {"batchGet": "GET", "batchUpdate": "POST", "batchClear": "POST"}
        if table.get(verb) == method:
            return _RouteInfo(f"values.{verb}", sid)
        return None
    if not tail.startswith("values/"):
        return None
    segment = tail[len("values/") :]
    if not segment or "/" in segment:
        return None
    # the range itself arrives percent-encoded, so a literal ':' can only be the custom-method suffix
    for suffix, endpoint in ((":append", "values.append"), (":clear", "values.clear")):
        if segment.endswith(suffix):
            if method != "POST":
                return None
            return _RouteInfo(endpoint, sid, unquote(segment[: -len(suffix)]))
    if method == "GET":
        return _RouteInfo("values.get", sid, unquote(segment))
    if method == "PUT":
        return _RouteInfo("values.update", sid, unquote(segment))
    return None
