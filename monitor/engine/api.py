"""What goes into the engine thread and what comes out: small dataclasses, no torch.

A `Request` carries a window and the questions to ask about it (the rule engine chose them:
gates and schedules already applied). A `Result` carries the answers, or the error that
stopped them, attached to the window it belongs to. Both carry the source (room) they belong
to, so that one engine can answer the windows of several rooms together.

Both are frozen: a Result is made in the engine thread and read in others (rules, sinks), so
nobody changes one after it is made (`dataclasses.replace` makes an amended copy).

A `Backend` is the only thing the engine thread calls: the local engine (transformers, or
SALMONN's own model), or a model served elsewhere, chosen by `model.backend` (see
`monitor.engine.backends`).
"""

from __future__ import annotations

import logging
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Protocol

from monitor.windows import Window

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Question:
    """A yes/no question, scored as P(yes) / (P(yes) + P(no))."""

    key: str  # the rule id; unique within a request
    prompt: str


@dataclass(frozen=True)
class TextTask:
    """A free-text question about one segment of the window (usually a speech utterance)."""

    key: str
    prompt: str
    start: int  # absolute sample indices, inside the window
    end: int
    max_new_tokens: int = 64


@dataclass(frozen=True)
class Request:
    window: Window
    questions: tuple[Question, ...] = ()
    texts: tuple[TextTask, ...] = ()
    generation: int = 0  # the rule set it was planned under (the rule engine counts reloads)
    source: str = ""  # the source (room) whose window it is
    live: bool = True  # False: a file read as fast as it is answered (batched deterministically, see the worker)

    def text_segments(self) -> Iterator[tuple[TextTask, int, int]]:
        """Each text task with its segment clipped to the window; a task wholly outside it is logged and skipped."""
        window = self.window
        for task in self.texts:
            start, end = max(task.start, window.start), min(task.end, window.end)
            if end <= start:
                log.warning("text question %s asks about samples %d-%d, outside window %d-%d: skipped",
                            task.key, task.start, task.end, window.start, window.end)
                continue
            yield task, start, end


@dataclass(frozen=True)
class Score:
    score: float  # P(yes) / (P(yes) + P(no))
    baseline: float  # the same question's score on silence (calibration)
    mass: float | None = None  # P(yes) + P(no) over the whole vocabulary: low = the model hardly meant yes or no

    @property
    def lift(self) -> float:
        return self.score - self.baseline


@dataclass(frozen=True)
class Transcript:
    key: str
    text: str
    start: int  # absolute sample indices of the segment that was answered
    end: int


@dataclass(frozen=True)
class Result:
    window: Window
    scores: dict[str, Score] = field(default_factory=dict)
    texts: list[Transcript] = field(default_factory=list)
    error: str | None = None  # set when the window failed (OOM, ...); scores/texts then empty
    engine_ms: float = 0.0
    generation: int = 0  # copied from the request: which rules asked these questions
    source: str = ""  # copied from the request: whose rules decide it


class Backend(Protocol):
    """A loaded model as the engine thread sees it: one owner, never shared between threads.

    `answer` takes up to `max_batch` requests, possibly of different sources, and returns one
    Result per request, in order. A failure that concerns one window is that Result's `error`;
    an exception fails the whole batch (the worker then fails each of its windows alone).

    A backend that asks a server for its baselines may also have `start_calibration(prompts,
    seconds)`: it starts asking and returns at once, and `answer` waits for a missing baseline
    within a window's own time. The worker uses it for calibrations after start (a reload), so
    that no room waits on a server that hangs.
    """

    name: str
    max_batch: int

    def calibrate(self, prompts: Sequence[str], seconds: float | None = None) -> dict[str, float]:
        """Each prompt's score on `seconds` of silence (its baseline), computing only those not known yet."""
        ...

    def answer(self, requests: Sequence[Request]) -> list[Result]:
        """Answer a batch of requests; one Result per request, in order."""
        ...
