"""A1 notation: column letters <-> indexes, sheet names quoted as Google echoes them, a half-open box as
"Sheet!A1:C3". Pure helpers shared by the cell model (formula references) and the range parsing.
"""

from __future__ import annotations

import re


def col_letters(index: int) -> str:
    """0-based column index -> A1 letters."""
    letters = ""
    n = index + 1
    while n:
        n, rem = divmod(n - 1, 26)
        letters = chr(65 + rem) + letters
    return letters


def col_index(letters: str) -> int:
    n = 0
    for ch in letters.upper():
        n = n * 26 + (ord(ch) - 64)
    return n - 1


_PLAIN_SHEET = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
_CELLISH = re.compile(r"^([A-Za-z]{1,3}\d+|[Rr]\d*[Cc]\d*)$")
_A1_END = re.compile(r"^([A-Za-z]{1,3})?([1-9]\d*)?$")


def sheet_ref(title: str) -> str:
    """The sheet name as Google echoes it: quoted only when a bare name would be ambiguous."""
    if _PLAIN_SHEET.match(title) and not _CELLISH.match(title):
        return title
    return "'" + title.replace("'", "''") + "'"


def a1(title: str, r0: int, c0: int, r1: int, c1: int) -> str:
    """Half-open 0-based box -> "Sheet!A1:C3" (a single cell stays "Sheet!C5")."""
    start = f"{col_letters(c0)}{r0 + 1}"
    if r1 - r0 <= 1 and c1 - c0 <= 1:
        return f"{sheet_ref(title)}!{start}"
    return f"{sheet_ref(title)}!{start}:{col_letters(c1 - 1)}{r1}"
