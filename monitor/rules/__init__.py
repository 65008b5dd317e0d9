"""Rule files and the pure rule engine that turns the model's answers into events.

    load_rules(path) -> RuleSet          validate a file or a folder of *.yaml (ValidationFailed lists every problem)
    RuleEngine(ruleset, tz).plan(window) -> Request; .update(window, result) -> [Event]; .swap(ruleset) -> [Event]
    RuleReloader(path).changed() / .reload() -> ReloadOutcome
"""

from monitor.rules.engine import RuleEngine, RuleStatus
from monitor.rules.loader import RuleSet, load_rules, parse_rules, rule_files
from monitor.rules.reload import ReloadOutcome, RuleReloader
from monitor.rules.schedule import Span, is_active, parse_span
from monitor.rules.schema import BINARY_SENSOR_CLASSES, EVENT_CLASSES, Gate, MatchRule, Rule, TextRule, YesNoRule

__all__ = [
    "BINARY_SENSOR_CLASSES", "EVENT_CLASSES", "Gate", "MatchRule", "ReloadOutcome", "Rule", "RuleEngine",
    "RuleReloader", "RuleSet", "RuleStatus", "Span", "TextRule", "YesNoRule", "is_active", "load_rules",
    "parse_rules", "parse_span", "rule_files",
]
