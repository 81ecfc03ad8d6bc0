"""One cell of the emulated sheet: what it stores (``Cell``: effective value and formula), how input
becomes a cell (RAW vs USER_ENTERED, ExtendedValue), how a cell renders (FORMATTED_VALUE,
UNFORMATTED_VALUE, FORMULA), and the small formula evaluator (arithmetic on literals, single same-sheet
references re-based by copyPaste).
"""

from __future__ import annotations

import ast
import math
import operator
import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from image_pipeline.testing.emulators.google.a1_notation import col_index, col_letters
from image_pipeline.testing.emulators.google.constants import MAX_CELL_CHARS
from image_pipeline.testing.emulators.google.errors import _Reply, sheets_error

CellValue = str | float | bool


@dataclass(frozen=True)
class Cell:
    value: CellValue  # the effective value (a formula's result)
    formula: str | None = None  # the text as entered, only for USER_ENTERED "=..."


class _Skip:
    """A JSON null in input: Sheets leaves that cell untouched."""


_SKIP = _Skip()
_NUMBER_RE = re.compile(r"^[+-]?(\d+(\.\d*)?|\.\d+)$")


class _Unsupported(Exception):
    pass


_BIN_OPS: dict[type[ast.operator], Callable[[float, float], float]] = {
    ast.Add: operator.add,
    ast.Sub: operator.sub,
    ast.Mult: operator.mul,
    ast.Div: operator.truediv,
    ast.Pow: operator.pow,
}


def _eval_node(node: ast.AST) -> CellValue:
    if isinstance(node, ast.Constant) and not isinstance(node.value, bool):
        if isinstance(node.value, int | float):
            return float(node.value)
        if isinstance(node.value, str):
            return node.value
    if isinstance(node, ast.Name) and node.id.upper() in ("TRUE", "FALSE"):
        return node.id.upper() == "TRUE"
    if isinstance(node, ast.UnaryOp) and isinstance(node.op, ast.USub | ast.UAdd):
        operand = _eval_node(node.operand)
        if not isinstance(operand, float):
            raise _Unsupported
        return -operand if isinstance(node.op, ast.USub) else operand
    if isinstance(node, ast.BinOp) and type(node.op) in _BIN_OPS:
        left, right = _eval_node(node.left), _eval_node(node.right)
        if not isinstance(left, float) or not isinstance(right, float):
            raise _Unsupported
        return _BIN_OPS[type(node.op)](left, right)
    raise _Unsupported


def evaluate_formula(formula: str) -> CellValue:
    """Arithmetic on literals only; other formulas render as Google would for an unknown name."""
    # Sheets writes power as ^; the AST is only inspected, never executed.
    expr = formula[1:].strip().replace("^", "**")
    try:
        tree = ast.parse(expr, mode="eval")
    except (SyntaxError, ValueError, RecursionError, MemoryError):
        return "#ERROR!"
    try:
        result = _eval_node(tree.body)
    except ZeroDivisionError:
        return "#DIV/0!"
    except OverflowError:
        return "#NUM!"
    except (_Unsupported, RecursionError):
        return "#NAME?"
    if isinstance(result, float) and not math.isfinite(result):
        return "#NUM!"
    return result


# A formula that is one cell of the same sheet (=A5, =$A$5): enough to show how copyPaste re-bases
# relative references. Anything bigger stays "arithmetic on literals only" (module docstring).
_REF_RE = re.compile(r"^=\s*(\$?)([A-Za-z]{1,3})(\$?)([1-9]\d*)\s*$")


def single_ref(formula: str) -> tuple[int, int] | None:
    """(row, col), 0-based, of a formula that is a single same-sheet cell reference."""
    found = _REF_RE.match(formula)
    return (int(found.group(4)) - 1, col_index(found.group(2).upper())) if found else None


def rebase_formula(formula: str, d_row: int, d_col: int) -> str:
    """A single-reference formula as PASTE_NORMAL pastes it ``d_row``/``d_col`` away: relative parts move
    with it, ``$`` parts stay ("Copy and paste ... relative references change", Sheets Help: "Use cell
    references in a formula", https://support.google.com/docs/answer/46977); off the grid it is #REF!."""
    found = _REF_RE.match(formula)
    if found is None:
        return formula
    col_abs, letters, row_abs, digits = found.groups()
    col = col_index(letters.upper()) + (0 if col_abs else d_col)
    row = int(digits) - 1 + (0 if row_abs else d_row)
    if col < 0 or row < 0:
        return "=#REF!"
    return f"={col_abs}{col_letters(col)}{row_abs}{row + 1}"


def format_number(x: float) -> str:
    if math.isfinite(x) and x.is_integer() and abs(x) < 1e15:
        return str(int(x))
    return format(x, ".15g").replace("e", "E")


def formatted(cell: Cell | None) -> str:
    if cell is None:
        return ""
    value = cell.value
    if isinstance(value, bool):
        return "TRUE" if value else "FALSE"
    if isinstance(value, float):
        return format_number(value)
    return value


def unformatted(cell: Cell | None) -> Any:
    if cell is None:
        return ""
    value = cell.value
    if isinstance(value, float) and math.isfinite(value) and value.is_integer() and abs(value) < 2**53:
        return int(value)
    return value


def render(cell: Cell | None, option: str) -> Any:
    if option == "FORMATTED_VALUE":
        return formatted(cell)
    if option == "FORMULA" and cell is not None and cell.formula is not None:
        return cell.formula
    return unformatted(cell)


def _cell_from_extended(value: Any, where: str) -> Cell | None:
    """An ExtendedValue (``{"stringValue": ...}`` etc.) as stored; None or {} clears the cell."""
    if not value:
        return None
    if not isinstance(value, dict) or len(value) != 1:
        raise _Reply(sheets_error(400, f"{where}: exactly one value kind must be set."))
    [(kind, raw)] = value.items()
    if kind == "stringValue":
        return Cell(str(raw)) if raw != "" else None
    if kind == "numberValue":
        return Cell(float(raw))
    if kind == "boolValue":
        return Cell(bool(raw))
    if kind == "formulaValue":
        return Cell(evaluate_formula(str(raw)), formula=str(raw))
    raise _Reply(sheets_error(400, f"{where}: Unknown value kind {kind}."))


def parse_input(value: Any, user_entered: bool) -> Cell | None | _Skip:
    """One input cell as the API stores it (``None`` clears the cell). Raises ValueError on bad types."""
    if value is None:
        return _SKIP
    if isinstance(value, bool):
        return Cell(value)
    if isinstance(value, int | float):
        return Cell(float(value))
    if not isinstance(value, str):
        raise ValueError(type(value).__name__)
    if len(value) > MAX_CELL_CHARS:
        raise OverflowError
    if value == "":
        return None
    if not user_entered:
        return Cell(value)
    if value.startswith("'"):
        # a leading apostrophe is the UI's "treat as text" marker and is not part of the value
        return Cell(value[1:]) if len(value) > 1 else None
    if value.startswith("=") and len(value) > 1:
        return Cell(evaluate_formula(value), formula=value)
    if value.upper() in ("TRUE", "FALSE"):
        return Cell(value.upper() == "TRUE")
    if _NUMBER_RE.match(value):
        return Cell(float(value))
    return Cell(value)
