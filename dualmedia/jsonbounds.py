"""JSON from untrusted bytes (request bodies, manifest lines) without recursing into it.

Python's json parser recurses once per nesting level: a line of 100,000 `[` costs a
RecursionError wherever it is parsed. `loads` counts the nesting first, with two regex
passes in C (string literals out, then brackets), and refuses what nests deeper than a
bound. Brackets inside strings do not count.
"""

from __future__ import annotations

import json
import re
from typing import Any

MAX_DEPTH = 16  # the deepest valid body or manifest line here needs 3
# A JSON string literal (escapes included); what is left outside them is structure.
_STRING = re.compile(rb'"[^"\\]*(?:\\.[^"\\]*)*"', re.DOTALL)
_BRACKET = re.compile(rb"[\[\]{}]")


class TooDeep(ValueError):
    """The JSON nests deeper than allowed (refused before parsing)."""


def depth(raw: bytes, limit: int = MAX_DEPTH) -> int:
    """How deeply `raw`'s arrays and objects nest; stops once it passes `limit`."""
    level = deepest = 0
    for match in _BRACKET.finditer(_STRING.sub(b'""', raw)):
        level += 1 if match.group() in (b"[", b"{") else -1
        if level > deepest:
            deepest = level
            if deepest > limit:
                break
    return deepest


def loads(raw: bytes, text: str | None = None, limit: int = MAX_DEPTH) -> Any:
    """json.loads(text or raw), refused with TooDeep when it nests deeper than `limit`.

    `text` is the decoded form when the caller already has it (its own error handling
    for bad UTF-8); json.JSONDecodeError passes through as from json.loads."""
    if depth(raw, limit) > limit:
        raise TooDeep(f"nests deeper than {limit} levels")
    return json.loads(raw.decode("utf-8", errors="replace") if text is None else text)
