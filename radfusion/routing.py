"""Routing rules compiled at start-up: which detectors run on a series, where results go."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from ai_engine.detectors.registry import UnknownDetectorError, require_detector
from dicom_node.errors import DicomNodeError
from dicom_node.matching import SeriesMatcher, compile_match
from radfusion.errors import ConfigError
from radfusion.settings import RoutingRuleSettings


@dataclass(frozen=True)
class Route:
    """One compiled rule."""

    name: str
    matcher: SeriesMatcher
    detectors: tuple[str, ...]
    destinations: tuple[str, ...]
    report_destinations: tuple[str, ...]
    alert_channels: tuple[str, ...]


@dataclass(frozen=True)
class RouteMatch:
    """A detector chosen for a series, with the rule that chose it (and says where results go)."""

    route: Route
    detector: str


class Router:
    """Evaluates every rule against a series' attributes."""

    def __init__(self, routes: Sequence[Route]) -> None:
        self.routes = tuple(routes)

    def select(self, attributes: Mapping[str, object]) -> list[RouteMatch]:
        """Every (rule, detector) pair whose rule matches; a detector named twice runs once."""
        chosen: dict[str, RouteMatch] = {}
        for route in self.routes:
            if route.matcher.matches(attributes):
                for detector in route.detectors:
                    chosen.setdefault(detector, RouteMatch(route, detector))
        return list(chosen.values())


def compile_routing(rules: Sequence[RoutingRuleSettings]) -> Router:
    """Compile all rules; ConfigError names the rule, the key and the reason."""
    routes = []
    for i, rule in enumerate(rules):
        try:
            matcher = compile_match(rule.match)
        except DicomNodeError as exc:
            raise ConfigError(f"routing[{i}] ({rule.name}).match: {exc}") from None
        for j, name in enumerate(rule.detectors):
            try:
                require_detector(name)
            except UnknownDetectorError as exc:
                raise ConfigError(f"routing[{i}] ({rule.name}).detectors[{j}]: {exc}") from None
        routes.append(Route(rule.name, matcher, tuple(rule.detectors), tuple(rule.destinations),
                            tuple(rule.report_destinations), tuple(rule.alert_channels)))
    return Router(routes)
