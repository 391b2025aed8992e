"""Reading a model's free-text answer as a label: one rule per answer type, None when it can't be read.

An unreadable answer is never guessed: evaluation counts it as wrong and reports how many there were.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

_YES = {"yes", "yeah", "yep", "true", "correct", "right"}
_NO = {"no", "nope", "false", "incorrect", "not"}
_WORD = re.compile(r"[a-z0-9']+")


def parse_yes_no(text: str) -> int | None:
    """1 for yes, 0 for no: the first yes/no word decides ("Yes, but not ..." is yes; "No." is no).

    "not" counts as no only where it comes before any yes word ("Not really")."""
    for word in _WORD.findall(text.lower()):
        if word in _YES:
            return 1
        if word in _NO:
            return 0
    return None


def parse_choice(text: str, options: Sequence[str]) -> int | None:
    """The option index named by a letter ("B", "B.", "(b)", "Option B", "B) ...") or, failing that, by
    exactly one option's text appearing in the answer."""
    letters = "ABCDEFGHIJKLMNOPQRSTUVWXYZ"[: len(options)]
    stripped = text.strip()
    found = re.match(rf"^\(?(?:option\s+)?([{letters}{letters.lower()}])(?:[.):\s]|$)", stripped, re.IGNORECASE)
    if found:
        return letters.index(found.group(1).upper())
    return parse_name(text, options)


def parse_name(text: str, names: Sequence[str]) -> int | None:
    """The index of the one name the answer mentions (whole words, case-insensitive); None if none or several.

    "female" does not count as "male": names are matched as whole words, longest first."""
    lowered = text.lower()
    hits = []
    taken: list[tuple[int, int]] = []
    for index in sorted(range(len(names)), key=lambda k: -len(names[k])):
        for m in re.finditer(rf"(?<![a-z]){re.escape(names[index].lower())}(?![a-z])", lowered):
            if not any(a < m.end() and m.start() < b for a, b in taken):
                hits.append(index)
                taken.append(m.span())
    distinct = set(hits)
    return distinct.pop() if len(distinct) == 1 else None


def parse_number(text: str) -> int | None:
    """The first whole number in the answer ("About 34." -> 34; "34-year-old" -> 34); None without one
    (a decimal such as "3.5" is no whole number)."""
    found = re.search(r"(?<![\d.])(\d{1,3})(?!\d|\.\d)", text)
    return int(found.group(1)) if found else None
