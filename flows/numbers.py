"""Phone numbers in one form: E.164 (`+38640404040`).

Slovenian numbers reach the controller written many ways: `040404040` (national, with the
trunk prefix 0), `040 40 40 40`, `+38640404040`, `0038640404040`, and from some trunks
`38640404040`. All of them are one number. Anything else (letters, quotes, `../`, empty,
over-long) is a `NumberError`: a caller ID never travels further as raw text.
"""

from __future__ import annotations

from flows.errors import NumberError

DEFAULT_COUNTRY_CODE = "386"  # Slovenia: every line of the operator's notice is Slovenian
MAX_E164_DIGITS = 15  # ITU-T E.164: at most 15 digits after the "+"
MIN_E164_DIGITS = 8  # shorter is no dialable subscriber number with a country code
MAX_RAW_LENGTH = 40  # longer input is garbage, not a number with separators
_SEPARATORS = frozenset(" -./()\t")


def normalise(raw: str, *, country_code: str = DEFAULT_COUNTRY_CODE) -> str:
    """Return `raw` as E.164 (`+` and digits) or raise `NumberError` saying why."""
    if not isinstance(raw, str):
        raise NumberError(f"a phone number must be text, not {type(raw).__name__}")
    if len(raw) > MAX_RAW_LENGTH:
        raise NumberError(f"not a phone number: {len(raw)} characters is too long")
    text = raw.strip()
    if not text:
        raise NumberError("not a phone number: empty")
    international = text.startswith("+")
    body = text[1:] if international else text
    digits: list[str] = []
    for char in body:
        if char in _SEPARATORS:
            continue
        if not ("0" <= char <= "9"):
            raise NumberError(f"not a phone number: {shown(raw)} contains {char!r}")
        digits.append(char)
    number = "".join(digits)
    if not number:
        raise NumberError(f"not a phone number: {shown(raw)} has no digits")
    if not international:
        if number.startswith("00"):
            number = number[2:]
        elif number.startswith("0"):
            number = country_code + number[1:]
        elif not number.startswith(country_code):
            raise NumberError(
                f"not a phone number: {shown(raw)} has neither a country code nor a "
                "national prefix 0"
            )
    if number.startswith("0"):
        raise NumberError(f"not a phone number: {shown(raw)} has a country code starting with 0")
    if not MIN_E164_DIGITS <= len(number) <= MAX_E164_DIGITS:
        raise NumberError(
            f"not a phone number: {shown(raw)} has {len(number)} digits, E.164 allows "
            f"{MIN_E164_DIGITS} to {MAX_E164_DIGITS}"
        )
    return "+" + number


def try_normalise(raw: str | None, *, country_code: str = DEFAULT_COUNTRY_CODE) -> str | None:
    """`normalise`, but None for a missing or unusable number (anonymous callers exist)."""
    if raw is None:
        return None
    try:
        return normalise(raw, country_code=country_code)
    except NumberError:
        return None


def shown(raw: str, limit: int = 24) -> str:
    """`raw` made safe to put in a log line or an error: printable, quoted, cut short."""
    cleaned = "".join(c if c.isprintable() else "?" for c in raw[:limit])
    return repr(cleaned + ("…" if len(raw) > limit else ""))


def masked(raw: str, limit: int = 24) -> str:
    """`raw` for a log line where it may be a phone number: its letters and digits hidden
    but the last two, the rest (separators, `+`, stray symbols) kept, so the line still
    shows why a number was unusable without naming anyone."""
    keep = 2 if len(raw) > 6 else 0
    hidden = "".join("*" if c.isalnum() else c for c in raw[: len(raw) - keep])
    return shown(hidden + raw[len(raw) - keep :], limit)


NUMBER_FORMS = ("national", "e164", "international")  # how a trunk may write a number


def in_form(e164: str, form: str, *, country_code: str = DEFAULT_COUNTRY_CODE) -> str | None:
    """`e164` written the way a trunk sends or accepts it: `national` (`040404040`, only for
    numbers of `country_code`: None for others), `e164` (`+38640404040`) or `international`
    (`0038640404040`)."""
    if form not in NUMBER_FORMS:
        raise ValueError(f"a number form is one of {', '.join(NUMBER_FORMS)}, not {form!r}")
    digits = e164.removeprefix("+")
    if form == "e164":
        return e164
    if form == "international":
        return "00" + digits
    if not digits.startswith(country_code):
        return None
    return "0" + digits.removeprefix(country_code)


def caller_id_in_form(e164: str, form: str, *, country_code: str = DEFAULT_COUNTRY_CODE) -> str:
    """`e164` as a caller ID in `form`; a number of another country has no national form and
    is written internationally instead."""
    written = in_form(e164, form, country_code=country_code)
    if written is None:
        written = in_form(e164, "international", country_code=country_code)
    assert written is not None  # every E.164 number has an international form
    return written
