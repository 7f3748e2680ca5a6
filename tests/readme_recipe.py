"""The README's recipe for adding a line ("Adding a line"), read from the README itself, so
the tests that follow it test what an operator reads."""

from __future__ import annotations

import re
from pathlib import Path

README = Path(__file__).resolve().parents[1] / "README.md"
SECOND_SALES_NUMBER = "040 40 40 46"


def complaints_recipe() -> str:
    """The TOML block the recipe tells an operator to append."""
    text = README.read_text(encoding="utf-8")
    section = text[text.index("#### Adding a line") :]
    match = re.search(r"```toml\n(.*?)```", section, re.S)
    assert match is not None, "the README's recipe has no toml block"
    return match.group(1)


def with_second_sales_number(config: str) -> str:
    """`config` with the recipe's second number added to the sales line, as it says."""
    old = 'numbers = ["040 40 40 45"]'
    assert config.count(old) == 1, "the sales line's numbers are not as the recipe expects"
    return config.replace(old, f'numbers = ["040 40 40 45", "{SECOND_SALES_NUMBER}"]')
