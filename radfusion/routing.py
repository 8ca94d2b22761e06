"""Routing rules compiled at start-up: which detectors run on a series, where results go."""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

from ai_engine.detectors.registry import UnknownDetectorError, require_detector
from dicom_node.errors import DicomNodeError
from dicom_node.matching import SeriesMatcher, compile_match
from radfusion.errors import ConfigError
from radfusion.ingest import SERIES_ATTRIBUTES
from radfusion.settings import RoutingRuleSettings


TARGETS = ("destinations", "report_destinations", "alert_channels")  # where results go: of a Route, RouteMatch, Job


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
    """A detector chosen for a series: the first rule that names it (the job's rule), and where its results go:
    every target of every matching rule that names it (one rule may send the results to the PACS, another page
    the emergency department)."""

    route: Route
    detector: str
    destinations: tuple[str, ...]
    report_destinations: tuple[str, ...]
    alert_channels: tuple[str, ...]


class Router:
    """Evaluates every rule against a series' attributes."""

    def __init__(self, routes: Sequence[Route]) -> None:
        self.routes = tuple(routes)

    def select(self, attributes: Mapping[str, object]) -> list[RouteMatch]:
        """Every detector a matching rule names, once, with the targets of all the matching rules that name it."""
        named: dict[str, list[Route]] = {}
        for route in self.routes:
            if route.matcher.matches(attributes):
                for detector in route.detectors:
                    named.setdefault(detector, []).append(route)
        return [RouteMatch(routes[0], detector, *(union(getattr(r, column) for r in routes) for column in TARGETS))
                for detector, routes in named.items()]



def union(lists: Iterable[Sequence[str]]) -> tuple[str, ...]:
    """The names of ``lists`` in order, each once."""
    return tuple(dict.fromkeys(name for names in lists for name in names))


def compile_routing(rules: Sequence[RoutingRuleSettings]) -> Router:
    """Compile all rules; ConfigError names the rule, the key and the reason."""
    routes = []
    for i, rule in enumerate(rules):
        try:
            matcher = compile_match(rule.match, keywords=SERIES_ATTRIBUTES)
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
