"""The store's statements and values on PostgreSQL: statements are written for SQLite with
`?` placeholders and translated once (cached); rows read back like `sqlite3.Row`; text
carries NUL through an escape, which PostgreSQL's text cannot hold (`storage.pg`)."""

from __future__ import annotations

import functools
import re
from collections.abc import Iterable, Sequence
from decimal import Decimal
from typing import Any

import psycopg
from psycopg.rows import RowMaker

Params = Sequence[Any]


class Row(tuple[Any, ...]):
    """A row indexable by position and by column name, like `sqlite3.Row`."""

    _names: dict[str, int]

    def __new__(cls, values: Iterable[Any], names: dict[str, int]) -> Row:
        row = super().__new__(cls, values)
        row._names = names
        return row

    def __getitem__(self, key: Any) -> Any:
        if isinstance(key, str):
            try:
                return tuple.__getitem__(self, self._names[key])
            except KeyError:
                raise IndexError(f"no such column: {key}") from None
        return tuple.__getitem__(self, key)

    def keys(self) -> list[str]:
        return list(self._names)


# PostgreSQL text cannot hold NUL, which a caller-supplied channel id or reason may: text is
# stored with NUL as ESCAPE + "0" and ESCAPE itself doubled (a Unicode noncharacter, never in
# real input), and decoded on the way out, so every string comes back as it went in.
_ESCAPE = "\ufffe"
_ESCAPED = re.compile(_ESCAPE + "(.)", re.DOTALL)


def _encode(text: str) -> str:
    if "\x00" not in text and _ESCAPE not in text:
        return text
    return text.replace(_ESCAPE, _ESCAPE * 2).replace("\x00", _ESCAPE + "0")


def _decode(text: str) -> str:
    if _ESCAPE not in text:
        return text
    return _ESCAPED.sub(lambda m: "\x00" if m.group(1) == "0" else m.group(1), text)


def _value(value: Any) -> Any:
    if isinstance(value, str):
        return _decode(value)
    # SUM over BIGINT is NUMERIC in PostgreSQL; SQLite answers an integer.
    if isinstance(value, Decimal):
        return int(value) if value == value.to_integral_value() else float(value)
    return value


def _rows(cursor: psycopg.Cursor[Any]) -> RowMaker[Row]:
    names = {column.name: i for i, column in enumerate(cursor.description or ())}

    def make(values: Sequence[Any]) -> Row:
        return Row((_value(v) for v in values), names)

    return make


_STRING = re.compile(r"'(?:[^']|'')*'")
# A plain insert of whole rows: `many` sends a long batch of them as COPY.
_PLAIN_INSERT = re.compile(
    r"^\s*INSERT\s+INTO\s+(\w+)\s*\(([\w\s,]+)\)\s*VALUES\s*\(\s*\?(?:\s*,\s*\?)*\s*\)\s*$",
    re.IGNORECASE,
)
# A long `IN (?, ?, ...)` (a sweep batch names 1,000 ids): psycopg would parse a query of a
# thousand placeholders anew at each batch, and the server plan a thousand-term list.
_IN_LIST = re.compile(r"\b(NOT\s+)?IN\s*\(\s*\?(?:\s*,\s*\?){15,}\s*\)", re.IGNORECASE)
COPY_FROM = 16  # rows from which a plain insert goes as COPY (a sweep batch's audit: 1,000)
_OR_IGNORE = re.compile(r"^\s*INSERT\s+OR\s+IGNORE\s+", re.IGNORECASE)
_NOT_INDEXED = re.compile(r"\s+NOT\s+INDEXED\b", re.IGNORECASE)
_JSON_FIELD = re.compile(r"json_extract\(\s*([\w.]+)\s*,\s*'\$\.(\w+)'\s*\)", re.IGNORECASE)
_IS_VALUE = re.compile(r"\bIS\s+(?!NULL\b|NOT\b|DISTINCT\b|TRUE\b|FALSE\b)")
_SUM_TEST = re.compile(
    r"\bSUM\(\s*([\w.]+\s*(?:=|!=|<>|<=|>=|<|>)\s*(?:'(?:[^']|'')*'|\d+))\s*\)", re.IGNORECASE
)


def _code(sql: str) -> str:
    sql = _NOT_INDEXED.sub("", sql)
    sql = _IS_VALUE.sub("IS NOT DISTINCT FROM ", sql)
    return sql.replace("%", "%%").replace("?", "%s")


@functools.lru_cache(maxsize=1024)
def translate(sql: str) -> str:
    """`sql` as written for SQLite, in PostgreSQL's spelling and psycopg's placeholders."""
    ignore = _OR_IGNORE.match(sql) is not None
    if ignore:
        sql = _OR_IGNORE.sub("INSERT ", sql)
    sql = _JSON_FIELD.sub(r"(\1::jsonb ->> '\2')", sql)
    sql = _SUM_TEST.sub(r"SUM(CASE WHEN \1 THEN 1 ELSE 0 END)", sql)
    # The rest only outside string literals: a message may well say "is".
    parts = _STRING.split(sql)
    literals = _STRING.findall(sql)
    out = [_code(parts[0])]
    for literal, code in zip(literals, parts[1:], strict=True):
        # psycopg reads `%` as a placeholder even inside a literal: doubled there too.
        out += [literal.replace("%", "%%"), _code(code)]
    sql = "".join(out)
    return f"{sql} ON CONFLICT DO NOTHING" if ignore else sql


@functools.lru_cache(maxsize=1024)
def _long_in_list(sql: str) -> bool:
    # Searched once per statement text: the search costs some 10 us, a look-up's budget.
    return _IN_LIST.search(sql) is not None


def _with_arrays(sql: str, params: tuple[Any, ...]) -> tuple[str, tuple[Any, ...]]:
    """Each long `IN (?, ?, ...)` of `sql` as `= ANY(?)` (`NOT IN` as `<> ALL(?)`), its
    parameters as one array: the same rows, one placeholder. The others keep their order
    (string literals hold no placeholder)."""
    if not _long_in_list(sql):
        return sql, params
    parts: list[str] = []
    values: list[Any] = []
    at = taken = 0
    for found in _IN_LIST.finditer(sql):
        before = sql[at : found.start()]
        ahead = _STRING.sub("", before).count("?")
        values.extend(params[taken : taken + ahead])
        listed = found.group(0).count("?")
        values.append(list(params[taken + ahead : taken + ahead + listed]))
        taken += ahead + listed
        parts.append(before + ("<> ALL(?)" if found.group(1) else "= ANY(?)"))
        at = found.end()
    parts.append(sql[at:])
    values.extend(params[taken:])
    return "".join(parts), tuple(values)


def _param(value: Any) -> Any:
    if isinstance(value, str):
        return _encode(value)
    # SQLite stores a bool as 1/0 in an INTEGER column; PostgreSQL has no implicit cast.
    return int(value) if isinstance(value, bool) else value


def _params(params: Params) -> tuple[Any, ...]:
    return tuple(_param(p) for p in params)
