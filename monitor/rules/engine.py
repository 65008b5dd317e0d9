"""The pure rule engine: windows and the model's answers in, events out.

No I/O, no threads, no clock of its own. Two times come with each window: the audio's own
clock (`window.audio_end`, seconds of audio since the source started: sample counts) measures
hold and cooldown, so a wall-clock step (NTP, a person setting the time) can neither keep a rule
ON for an hour nor end a hold at once; the wall clock (`window.t_end`) decides schedules and
stamps events. Replaying a file gives the same events as hearing it live, and every knob is
tested by feeding numbers. One thread owns an engine (the daemon's), calling `plan` -> model ->
`update` per window and `swap` between windows.

A yes_no rule's state machine, per window (a = window.audio_end, v = score or lift):

    outside schedule      -> not asked; streak = 0; an ON rule turns OFF at once (see below)
    gated out             -> not asked; counts as a miss (v below release)
    asked                 -> v; hit = v >= threshold; streak = streak + 1 if hit else 0
    OFF and streak >= patience and a - last ON >= cooldown   -> ON
    ON  and v >= release                                     -> stays ON, hold restarts at a
    ON  and (miss or v < release) and a - last sustain >= hold -> OFF (reason: released)

Every OFF event says why (`reason`): released, schedule, rule_changed, and from the pipeline
`muted` / `capture_lost` when the room can no longer hear (`deafen`), `disabled` when a person
switches the rule off (`switch`: a switched-off rule is not asked at all until switched on).

A rule is silent while outside its schedule, with one exception: a rule that is ON when its
schedule ends is switched OFF by the first window past the end, so that no hub is left with an
ON that nothing will ever clear. That OFF is the last event until the schedule starts again.
A window whose result carries an error changes nothing.

Reloads in flight: `plan` stamps each request with the rule-set generation it was planned under;
an answer that comes back under a later generation is used only for rules whose question did not
change since, so a changed question never consumes the old question's score.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from datetime import tzinfo
from typing import TYPE_CHECKING

from monitor.audio.levels import dbfs
from monitor.engine.api import Question, Request, Result, Score, TextTask
from monitor.events import Event, EventKind
from monitor.rules.loader import RuleSet
from monitor.rules.schedule import is_active
from monitor.rules.schema import MatchRule, Rule, TextRule, YesNoRule

if TYPE_CHECKING:
    from monitor.windows import Utterance, Window

log = logging.getLogger(__name__)


@dataclass
class _YesNoState:
    on: bool = False
    streak: int = 0  # consecutive asked windows at or above threshold
    last_sustain: float = 0.0  # audio time of the last window at or above release while ON
    last_on: float | None = None  # audio time of the last ON event (cooldown)
    score: Score | None = None  # the latest answer
    asked_at: float | None = None  # wall time of the window the latest answer is about
    active: bool | None = None  # in schedule at the last window
    unanswered: int = 0  # windows asked about that came back without this rule's score


@dataclass
class _TextState:
    last_end: int = -1  # end sample of the last utterance answered (no utterance twice)
    last_text: str | None = None
    last_at: float | None = None
    active: bool | None = None


@dataclass
class _MatchState:
    last_match: float | None = None  # wall time of the latest match
    last_match_audio: float | None = None  # audio time of the latest match (cooldown)
    last_text: str | None = None
    active: bool | None = None


@dataclass(frozen=True)
class RuleStatus:
    """A read-only view of one rule for publishing and metrics."""

    rule_id: str
    kind: str
    on: bool  # yes_no rules; False for the others
    score: float | None  # the latest raw P(yes) (yes_no rules)
    lift: float | None
    asked_at: float | None  # t of the window the latest answer is about
    active: bool | None  # in schedule at the latest window; None before the first
    streak: int = 0
    last_on: float | None = None  # audio time (seconds since the source started) of the latest ON or match
    last_text: str | None = None  # text and match rules: the latest transcript (that matched)


class RuleEngine:
    """Per-rule state machines over one RuleSet; see the module docstring for the semantics."""

    KEEP_GENERATIONS = 16  # answers planned this many reloads ago are still matched to their questions

    def __init__(self, ruleset: RuleSet, tz: tzinfo | None = None):
        self.tz = tz
        self._ruleset = ruleset
        self._states: dict[str, _YesNoState | _TextState | _MatchState] = {}
        self._last_window: tuple[float, float] | None = None  # (t_start, t_end) of the latest update
        self._last_key: tuple[int, int, float] | None = None
        self.generation = 0
        """Counts `swap`s and `switch`es; stamped on every request so that an answer knows which rules asked it."""
        self._off: set[str] = set()  # rules switched off by a person (ids; kept across swaps)
        self._questions: dict[int, dict[str, tuple[object, ...]]] = {0: _questions_of(ruleset)}  # generation -> asked
        self._init_states()

    @property
    def ruleset(self) -> RuleSet:
        return self._ruleset

    # ------------------------------------------------------------------ asking

    def active(self, rule: Rule, t: float) -> bool:
        """Enabled, not switched off, and inside its schedule at epoch time `t`."""
        return rule.enabled and rule.id not in self._off and is_active(rule.schedule, t, self.tz)

    def plan(self, window: Window) -> Request:
        """The questions worth asking about `window`: enabled, in schedule, gates passed.

        Read-only: planning a window twice gives the same request.
        """
        t = window.t_end
        questions: list[Question] = []
        texts: list[TextTask] = []
        for rule in self._ruleset.rules:
            if not self.active(rule, t):
                continue
            if isinstance(rule, YesNoRule):
                if rule.gate.passes(window.dbfs, window.speech_ratio):
                    questions.append(Question(key=rule.id, prompt=rule.ask))
            elif isinstance(rule, TextRule):
                state = self._states[rule.id]
                assert isinstance(state, _TextState)
                for utt in window.utterances:
                    if utt.end > state.last_end and utt.end > utt.start and _utterance_passes(rule, window, utt):
                        texts.append(TextTask(key=rule.id, prompt=rule.ask, start=utt.start, end=utt.end,
                                              max_new_tokens=rule.max_new_tokens))
        return Request(window=window, questions=tuple(questions), texts=tuple(texts), generation=self.generation)

    # ------------------------------------------------------------------ deciding

    def update(self, window: Window, result: Result) -> list[Event]:
        """Advance every rule by one window; the events it decided, in rule then transcript order."""
        if result.error is not None:
            log.debug("window %d failed (%s): rule states unchanged", window.seq, result.error)
            return []
        key = (window.start, window.end, window.t_end)
        if key == self._last_key:
            log.debug("window %d seen twice; ignored", window.seq)
            return []
        self._last_key = key
        self._last_window = (window.t_start, window.t_end)
        asked_by = self._asked_by(result.generation)
        events: list[Event] = []
        for rule in self._ruleset.rules:
            if not rule.enabled or rule.id in self._off or not asked_by(rule):
                continue  # switched off, or planned under rules that asked something else: not this rule's answer
            if isinstance(rule, YesNoRule):
                event = self._step(rule, window, result)
                if event is not None:
                    events.append(event)
            else:
                self._states[rule.id].active = self.active(rule, window.t_end)
        events.extend(self._transcripts(window, result, asked_by))
        return events

    def _asked_by(self, generation: int) -> Callable[[Rule], bool]:
        """Whether an answer planned under `generation` belongs to a rule as it is now."""
        if generation == self.generation:
            return lambda rule: True
        planned = self._questions.get(generation, {})
        return lambda rule: planned.get(rule.id) == rule.question()

    def _step(self, rule: YesNoRule, window: Window, result: Result) -> Event | None:
        state = self._states[rule.id]
        assert isinstance(state, _YesNoState)
        t = window.t_end
        a = window.audio_end
        state.active = self.active(rule, t)
        if not state.active:
            state.streak = 0
            if state.on:
                state.on = False
                return self._event(rule, "off", window, None, reason="schedule")
            return None
        score: Score | None = None
        if rule.gate.passes(window.dbfs, window.speech_ratio):
            score = result.scores.get(rule.id)
            if score is None:
                state.unanswered += 1  # a served model may answer neither yes nor no: say so, not every window
                level = logging.WARNING if state.unanswered in (1, 10, 100) or state.unanswered % 1000 == 0 else logging.DEBUG
                log.log(level, "rule %s: asked but no score came back for window %d (%d time(s)); state unchanged",
                        rule.id, window.seq, state.unanswered)
                return None
            state.score, state.asked_at = score, t
        value = None if score is None else (score.lift if rule.use == "lift" else score.score)
        state.streak = state.streak + 1 if value is not None and value >= rule.threshold else 0
        if state.on:
            if value is not None and value >= rule.release:
                state.last_sustain = a
            elif a - state.last_sustain >= rule.hold:
                state.on = False
                return self._event(rule, "off", window, score, reason="released")
            return None
        cooled = state.last_on is None or a - state.last_on >= rule.cooldown
        if state.streak >= rule.patience and cooled:
            state.on, state.last_on, state.last_sustain = True, a, a
            return self._event(rule, "on", window, score)
        return None

    def _transcripts(self, window: Window, result: Result, asked_by: Callable[[Rule], bool]) -> list[Event]:
        events: list[Event] = []
        t = window.t_end
        a = window.audio_end
        for item in sorted(result.texts, key=lambda x: (x.end, x.start)):
            rule = self._ruleset.get(item.key)
            if not isinstance(rule, TextRule) or not rule.enabled or not asked_by(rule) or not self.active(rule, t):
                continue
            state = self._states[rule.id]
            assert isinstance(state, _TextState)
            if item.end <= state.last_end:
                continue  # answered already (an overlapping window offered it again)
            state.last_end = item.end
            text = " ".join(item.text.split())
            if not text:
                continue
            state.last_text, state.last_at = text, t
            start = window.t_start + (item.start - window.start) / window.sample_rate
            end = window.t_start + (item.end - window.start) / window.sample_rate
            events.append(Event(rule_id=rule.id, rule_name=rule.name, kind="text", ts=t,
                                window_start=start, window_end=end, text=text))
            for derived in self._ruleset.rules:
                if isinstance(derived, MatchRule) and derived.source == rule.id and self.active(derived, t):
                    mstate = self._states[derived.id]
                    assert isinstance(mstate, _MatchState)
                    if mstate.last_match_audio is not None and a - mstate.last_match_audio < derived.cooldown:
                        continue
                    if derived.pattern.search(text):
                        mstate.last_match, mstate.last_match_audio, mstate.last_text = t, a, text
                        events.append(Event(rule_id=derived.id, rule_name=derived.name, kind="match", ts=t,
                                            window_start=start, window_end=end, text=text, source_rule=rule.id))
        return events

    def _event(self, rule: Rule, kind: EventKind, window: Window | tuple[float, float], score: Score | None,
               reason: str | None = None, ts: float | None = None) -> Event:
        t_start, t_end = (window.t_start, window.t_end) if not isinstance(window, tuple) else window
        log.debug("rule %s -> %s at %.3f%s", rule.id, kind, t_end, f" ({reason})" if reason else "")
        return Event(rule_id=rule.id, rule_name=rule.name, kind=kind, ts=t_end if ts is None else ts,
                     window_start=t_start, window_end=t_end,
                     score=None if score is None else score.score, lift=None if score is None else score.lift,
                     reason=reason)

    # ------------------------------------------------------------------ deafness

    def deafen(self, reason: str, ts: float) -> list[Event]:
        """The room can no longer hear (muted, capture lost) or be answered (model_failed): every ON rule turns OFF now, saying why.

        Streaks restart, so patience counts afresh once hearing resumes; hold and cooldown are
        left as they were (cooldown still spaces ON events across the gap). `ts` is the wall time
        of the change; the events carry the latest window's times.
        """
        events: list[Event] = []
        window = self._last_window or (ts, ts)
        for rule in self._ruleset.rules:
            state = self._states.get(rule.id)
            if isinstance(state, _YesNoState):
                state.streak = 0
                if state.on and isinstance(rule, YesNoRule):
                    state.on = False
                    events.append(self._event(rule, "off", window, None, reason=reason, ts=ts))
        return events

    # ------------------------------------------------------------------ reloading

    def swap(self, ruleset: RuleSet) -> list[Event]:
        """Start using `ruleset` (call between windows); the OFF events this causes.

        A rule keeps its state when it is still there, enabled, and asks the same question
        (`ask`, `answer`, `use`; for match rules `from`, `match`, `case_sensitive`) — editing
        thresholds, timing, gates, schedule or presentation does not reset it. A rule that was
        ON and is removed, disabled or now asks something else gets an OFF event (stamped with
        the latest window), so the hub's state never outlives the rule that set it.
        """
        events: list[Event] = []
        old = self._ruleset
        kept: dict[str, _YesNoState | _TextState | _MatchState] = {}
        for rule in old.rules:
            state = self._states.get(rule.id)
            if state is None:
                continue
            new = ruleset.get(rule.id)
            same = new is not None and new.enabled and new.question() == rule.question()
            if same:
                kept[rule.id] = state
            elif isinstance(state, _YesNoState) and state.on and self._last_window is not None:
                why = "removed" if new is None else "disabled" if not new.enabled else "changed its question"
                events.append(self._event(rule, "off", self._last_window, None, reason=f"rule_{why.split()[0]}"))
                log.info("rule %s %s while ON: sent OFF", rule.id, why)
        self._ruleset = ruleset
        self._states = kept
        self._new_generation()
        self._init_states()
        return events

    def _new_generation(self) -> None:
        """Answers planned before this moment are used only for rules that still ask the same (see `plan`)."""
        self.generation += 1
        self._questions[self.generation] = _questions_of(self._ruleset, self._off)
        self._questions.pop(self.generation - self.KEEP_GENERATIONS, None)

    # ------------------------------------------------------------------ switching rules off and on

    @property
    def switched_off(self) -> frozenset[str]:
        """The ids of the rules a person switched off (also ids no rule of this set has: they are kept)."""
        return frozenset(self._off)

    def switch(self, rule_id: str, on: bool, ts: float) -> list[Event]:
        """Switch a rule on or off (between windows); the OFF event this causes.

        Off: the rule is not planned, its answers are not decided, and a rule that is ON turns OFF
        now (reason `disabled`, stamped `ts` with the latest window's times). On again: it starts
        afresh (streak 0); an answer planned while it was off is not taken for it.
        """
        if on == (rule_id not in self._off):
            return []
        events: list[Event] = []
        if on:
            self._off.discard(rule_id)
        else:
            self._off.add(rule_id)
            rule, state = self._ruleset.get(rule_id), self._states.get(rule_id)
            if isinstance(state, _YesNoState):
                state.streak, state.active = 0, False
                if state.on and rule is not None:
                    state.on = False
                    events.append(self._event(rule, "off", self._last_window or (ts, ts), None, reason="disabled", ts=ts))
        self._new_generation()
        return events

    def _init_states(self) -> None:
        for rule in self._ruleset.rules:
            if not rule.enabled or rule.id in self._states:
                continue
            if isinstance(rule, YesNoRule):
                self._states[rule.id] = _YesNoState()
            elif isinstance(rule, TextRule):
                self._states[rule.id] = _TextState()
            else:
                self._states[rule.id] = _MatchState()

    # ------------------------------------------------------------------ reading

    def is_on(self, rule_id: str) -> bool:
        state = self._states.get(rule_id)
        return isinstance(state, _YesNoState) and state.on

    def on_states(self) -> dict[str, bool]:
        """ON/OFF of every enabled yes_no rule (the retained MQTT states)."""
        return {r.id: self.is_on(r.id) for r in self._ruleset.rules if isinstance(r, YesNoRule) and r.enabled}

    def latest_scores(self) -> dict[str, Score | None]:
        """The latest answer of every enabled yes_no rule; None until first asked."""
        out: dict[str, Score | None] = {}
        for rule in self._ruleset.rules:
            state = self._states.get(rule.id)
            if isinstance(state, _YesNoState):
                out[rule.id] = state.score
        return out

    def status(self, rule_id: str) -> RuleStatus:
        """One rule's state; KeyError for an unknown or disabled rule."""
        rule = self._ruleset[rule_id]
        state = self._states[rule_id]
        if isinstance(state, _YesNoState):
            score = state.score
            return RuleStatus(rule.id, rule.kind, state.on, None if score is None else score.score,
                              None if score is None else score.lift, state.asked_at, state.active,
                              streak=state.streak, last_on=state.last_on)
        if isinstance(state, _TextState):
            return RuleStatus(rule.id, rule.kind, False, None, None, state.last_at, state.active, last_text=state.last_text)
        return RuleStatus(rule.id, rule.kind, False, None, None, state.last_match, state.active,
                          last_on=state.last_match_audio, last_text=state.last_text)

    def statuses(self) -> dict[str, RuleStatus]:
        return {rid: self.status(rid) for rid in self._states}


def _questions_of(ruleset: RuleSet, off: set[str] | frozenset[str] = frozenset()) -> dict[str, tuple[object, ...]]:
    """rule id -> what it asks, for the enabled rules of a set that are not switched `off`."""
    return {rule.id: rule.question() for rule in ruleset.rules if rule.enabled and rule.id not in off}


def _utterance_passes(rule: TextRule, window: Window, utt: Utterance) -> bool:
    """A text rule's gate, measured on the utterance (not on the whole window around it)."""
    gate = rule.gate
    if gate.min_dbfs is None and gate.speech is None:
        return True
    return gate.passes(dbfs(window.segment(utt.start, utt.end)), window.speech_between(utt.start, utt.end))
