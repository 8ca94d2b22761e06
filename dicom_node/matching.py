"""Declarative series matching for routing rules, compiled once and evaluated per series.

Syntax of a rule's ``match`` (YAML shown; any mapping/list/str/number structure works)::

    match:
      Modality: CT                          # exact: case-insensitive, whitespace-trimmed
      BodyPartExamined: [HEAD, BRAIN]       # a list of patterns: any of them
      SeriesDescription: "!/scout|localizer/i"   # "!" negates; /regex/ searches, /regex/i ignores case
      ImageType: "!LOCALIZER"               # multi-valued attributes match if any value matches
      SliceThickness: {min: 0.5, max: 5}    # inclusive numeric range; either bound optional
      Rows: 512                             # a number: numeric equality
      ProtocolName: {not: /test/i}          # {not: pattern} negates any pattern
      any:                                  # combinators: lists of such mappings, nestable
        - {Manufacturer: /siemens/i}
        - all: [{Manufacturer: GE}, {SeriesNumber: {min: 2}}]

* Every key of a mapping must hold. Keys are DICOM keywords (checked against pydicom's
  dictionary, and against the keywords the caller's series attributes hold, when it names
  them) or the combinators ``all`` (every mapping in the list holds) and ``any`` (at least
  one holds).
* A missing attribute (absent, or None in the attributes) never matches a positive pattern
  and always satisfies a negated one.
* Exact strings compare case-insensitively after trimming; ``/.../`` patterns use Python
  ``re.search`` on the trimmed text; ranges compare numerically and a non-numeric value
  does not match.

:func:`compile_match` raises :class:`~dicom_node.errors.RuleError` naming the path inside the
spec (e.g. ``match.any[1].SeriesDescription``) and the reason.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Collection, Mapping, Sequence

from pydicom.datadict import tag_for_keyword

from dicom_node.errors import RuleError

ValueTest = Callable[[object], bool]
Predicate = Callable[[Mapping[str, object]], bool]

_REGEX_FORM = re.compile(r"/(.*)/(i?)", re.DOTALL)
_COMBINATORS = ("all", "any")


class SeriesMatcher:
    """A compiled ``match`` spec; :meth:`matches` takes header attributes keyed by DICOM keyword."""

    def __init__(self, predicate: Predicate, spec: Mapping[str, object]) -> None:
        self._predicate = predicate
        self.spec = spec

    def matches(self, attributes: Mapping[str, object]) -> bool:
        """True when every condition of the spec holds for ``attributes``."""
        return self._predicate(attributes)


def compile_match(spec: object, path: str = "match", keywords: Collection[str] | None = None) -> SeriesMatcher:
    """Compile a ``match`` mapping; raise RuleError naming ``path`` inside it when it is malformed, or when it tests
    a keyword outside ``keywords`` (the attributes a series is described by: any other would always read as
    missing, so a rule on it would silently never, or always, match)."""
    if not isinstance(spec, Mapping):
        raise RuleError(f"{path}: expected a mapping of DICOM keyword to pattern, got {type(spec).__name__}")
    return SeriesMatcher(_compile_conditions(spec, path, keywords), spec)


def _values(value: object) -> list[object]:
    """An attribute as a list of its non-empty values (empty for missing)."""
    if value is None:
        return []
    items = list(value) if isinstance(value, list | tuple) else [value]
    return [item for item in items if item is not None and str(item).strip() != ""]


def _as_float(value: object) -> float | None:
    try:
        return float(value)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return None


def _is_number(value: object) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _compile_conditions(spec: Mapping[str, object], path: str, keywords: Collection[str] | None) -> Predicate:
    if not spec:
        raise RuleError(f"{path}: empty mapping; a condition needs at least one keyword or combinator")
    predicates = [_compile_entry(str(key), value, f"{path}.{key}", keywords) for key, value in spec.items()]
    return lambda attributes: all(predicate(attributes) for predicate in predicates)


def _compile_entry(key: str, value: object, path: str, keywords: Collection[str] | None) -> Predicate:
    if key in _COMBINATORS:
        if not isinstance(value, Sequence) or isinstance(value, str) or not value:
            raise RuleError(f"{path}: expected a non-empty list of mappings, got {value!r}")
        branches: list[Predicate] = []
        for index, item in enumerate(value):
            if not isinstance(item, Mapping):
                raise RuleError(f"{path}[{index}]: expected a mapping, got {type(item).__name__}")
            branches.append(_compile_conditions(item, f"{path}[{index}]", keywords))
        combine = all if key == "all" else any
        return lambda attributes: combine(branch(attributes) for branch in branches)
    if tag_for_keyword(key) is None:
        raise RuleError(f"{path}: {key!r} is not a DICOM keyword (nor 'all'/'any')")
    if keywords is not None and key not in keywords:
        raise RuleError(f"{path}: {key!r} is not an attribute series are routed by; they are: "
                        f"{', '.join(sorted(keywords))}")
    test = _compile_pattern(value, path)
    return lambda attributes: test(attributes.get(key))


def _compile_pattern(pattern: object, path: str) -> ValueTest:
    if isinstance(pattern, str):
        text = pattern.strip()
        if text.startswith("!"):
            return _negate(_compile_string(text[1:].strip(), path))
        return _compile_string(text, path)
    if _is_number(pattern):
        number = float(pattern)  # type: ignore[arg-type]
        return lambda value: any(_as_float(item) == number for item in _values(value))
    if isinstance(pattern, list):
        if not pattern:
            raise RuleError(f"{path}: empty list of patterns matches nothing")
        alternatives = [_compile_pattern(item, f"{path}[{index}]") for index, item in enumerate(pattern)]
        return lambda value: any(alternative(value) for alternative in alternatives)
    if isinstance(pattern, Mapping):
        keys = set(pattern)
        if keys == {"not"}:
            return _negate(_compile_pattern(pattern["not"], f"{path}.not"))
        if keys and keys <= {"min", "max"}:
            return _compile_range(pattern, path)
        raise RuleError(f"{path}: a mapping pattern is {{min, max}} or {{not}}, got keys {sorted(map(str, keys))}")
    raise RuleError(f"{path}: unsupported pattern {pattern!r} ({type(pattern).__name__})")


def _negate(test: ValueTest) -> ValueTest:
    return lambda value: not test(value)


def _compile_string(text: str, path: str) -> ValueTest:
    form = _REGEX_FORM.fullmatch(text) if len(text) >= 2 else None
    if form:
        try:
            regex = re.compile(form.group(1), re.IGNORECASE if form.group(2) else 0)
        except re.error as exc:
            raise RuleError(f"{path}: bad regex {form.group(1)!r}: {exc}") from exc
        return lambda value: any(regex.search(str(item).strip()) for item in _values(value))
    if not text:
        raise RuleError(f"{path}: empty string pattern")
    target = text.casefold()
    return lambda value: any(str(item).strip().casefold() == target for item in _values(value))


def _compile_range(pattern: Mapping[str, object], path: str) -> ValueTest:
    bounds: dict[str, float] = {}
    for name in ("min", "max"):
        if name in pattern:
            bound = pattern[name]
            if not _is_number(bound):
                raise RuleError(f"{path}.{name}: range bound {bound!r} is not a number")
            bounds[name] = float(bound)  # type: ignore[arg-type]
    low, high = bounds.get("min", float("-inf")), bounds.get("max", float("inf"))
    if low > high:
        raise RuleError(f"{path}: min {low} > max {high}")

    def in_range(value: object) -> bool:
        numbers = (_as_float(item) for item in _values(value))
        return any(number is not None and low <= number <= high for number in numbers)

    return in_range
