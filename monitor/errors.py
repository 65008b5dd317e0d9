"""An exception as one line a person can read: what every part says when something expected fails."""

from __future__ import annotations

import re

# The end of a sentence inside a line: a full stop (or ! ?) followed by a blank.
_SENTENCE_END = re.compile(r"[.!?](?=\s)")


def first_line(exc: BaseException, with_type: bool = True) -> str:
    """`Type: text` of an exception's message, cut to its first line and never mid-sentence.

    Some messages break a sentence across lines. transformers' missing-package errors do: "...
    not found in your environment. Check out the instructions on the\ninstallation page: ..." —
    where the first line ends inside a sentence, it is cut after its last complete one — and "...
    You can install it with pip:\n`pip install timm`. Please note ..." — where it ends with a colon,
    the next line's first sentence (what to run) is kept after it. A one-line message, or a first
    line without a whole sentence in it, is kept as it is.
    """
    lines = [line.strip() for line in str(exc).strip().splitlines()]
    text = lines[0] if lines else ""
    if len(lines) > 1 and text.endswith(":"):
        follows = lines[1]
        end = _SENTENCE_END.search(follows + " ")
        text = f"{text} {follows[:end.end()] if end else follows}"
    elif len(lines) > 1 and text and text[-1] not in ".!?;)":
        ends = list(_SENTENCE_END.finditer(text))
        if ends:
            text = text[:ends[-1].end()]
    if not with_type:
        return text or type(exc).__name__
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__
