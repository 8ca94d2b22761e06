"""Series geometry and candidate timing."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone

import pytest

from dicom_node.assembly import SlicePosition, check_series_geometry, series_is_candidate
from dicom_node.errors import ConfigError

AXIAL = (1.0, 0.0, 0.0, 0.0, 1.0, 0.0)
CORONAL = (1.0, 0.0, 0.0, 0.0, 0.0, -1.0)


def axial_stack(zs: list[float]) -> list[SlicePosition]:
    return [SlicePosition((0.0, 0.0, z), AXIAL, index + 1) for index, z in enumerate(zs)]


def test_regular_stack_in_any_order_is_ok_with_its_spacing() -> None:
    report = check_series_geometry(list(reversed(axial_stack([0, 2.5, 5, 7.5, 10]))))
    assert report.ok and report.reason is None and report.spacing_mm == pytest.approx(2.5)


def test_gap_is_reported_with_where_it_is() -> None:
    report = check_series_geometry(axial_stack([0, 2, 4, 10, 12, 14]))
    assert not report.ok and len(report.gaps) == 1
    gap = report.gaps[0]
    assert (gap.after_instance, gap.before_instance, gap.step_mm) == (3, 4, pytest.approx(6))
    assert "after instance 3" in report.reason


def test_gap_factor_is_a_parameter() -> None:
    slices = axial_stack([0, 2, 4, 7.5, 9.5, 11.5])
    assert not check_series_geometry(slices).ok
    assert check_series_geometry(slices, gap_factor=2.0).ok
    with pytest.raises(ConfigError):
        check_series_geometry(slices, gap_factor=1.0)


def test_duplicate_position_is_reported() -> None:
    report = check_series_geometry(axial_stack([0, 2, 2, 4]))
    assert not report.ok and "duplicate position" in report.reason and "instance 2" in report.reason


def test_mixed_orientations_are_reported() -> None:
    slices = axial_stack([0, 2]) + [SlicePosition((0.0, 5.0, 0.0), CORONAL, 3)]
    report = check_series_geometry(slices)
    assert not report.ok and "mixed orientations" in report.reason and "instance 3" in report.reason


def test_oblique_stack_is_ordered_along_its_normal() -> None:
    tilted = (1.0, 0.0, 0.0, 0.0, 0.8, -0.6)  # normal (0, 0.6, 0.8)
    slices = [SlicePosition((0.0, 0.6 * d, 0.8 * d), tilted, i) for i, d in enumerate([3, 0, 6, 1.5, 4.5])]
    report = check_series_geometry(slices)
    assert report.ok and report.spacing_mm == pytest.approx(1.5)


def test_two_d_images_without_position_have_no_geometry_to_check() -> None:
    views = [SlicePosition(None, None, 1), SlicePosition(None, None, 2)]
    assert check_series_geometry(views).ok


def test_partly_positioned_series_is_not_ok() -> None:
    slices = axial_stack([0, 2]) + [SlicePosition(None, None, 9)]
    report = check_series_geometry(slices)
    assert not report.ok and "instance 9" in report.reason


NOW = datetime(2024, 1, 1, 12, 0, tzinfo=timezone.utc)


@pytest.mark.parametrize(("quiet_s", "released", "expected"), [
    (5, True, False),     # released but not settled
    (11, True, True),     # released and settled
    (11, False, False),   # settled but still open (or aborted)
    (301, False, True),   # quiet timeout regardless
])
def test_candidate_timing(quiet_s: float, released: bool, expected: bool) -> None:
    last = NOW - timedelta(seconds=quiet_s)
    assert series_is_candidate(last, released, NOW, settle_s=10, quiet_timeout_s=300) is expected


def test_candidate_rejects_settle_longer_than_quiet_timeout() -> None:
    with pytest.raises(ConfigError, match="settle_s"):
        series_is_candidate(NOW, True, NOW, settle_s=60, quiet_timeout_s=10)
