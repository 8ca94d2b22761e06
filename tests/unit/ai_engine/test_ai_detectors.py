"""Classical baselines find the obvious lesion of a phantom, and stay quiet on lesion-free ones."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from ai_engine.detectors.registry import available_detectors, create_detector
from ai_engine.errors import UnknownDetectorError
from ai_engine.inputs import load_inputs
from ai_engine.results import FindingType, Task
from ai_engine.synthetic.studies import write_study


def _run(name: str, kind: str, path: Path, seed: int, lesion: bool, rows: int, slices: int | None = None):  # noqa: ANN202
    study = write_study(kind, path, seed=seed, lesion=lesion, rows=rows, slices=slices)
    detector = create_detector(name)
    inputs = load_inputs(available_detectors()[name], study.paths)
    return study, inputs, detector.detect(inputs)


@pytest.mark.parametrize("seed", [0, 3])
def test_ich_baseline_finds_the_bleed_with_its_volume(seed: int, tmp_path: Path) -> None:
    study, inputs, result = _run("ich_baseline", "head_ct", tmp_path, seed, True, rows=128)
    truth = study.lesions[0]
    assert result.positive and result.task is Task.ICH
    finding = result.findings[0]
    assert finding.finding_type is FindingType.HEMORRHAGE
    spacing = np.array(inputs.volume.spacing_mm)
    assert np.linalg.norm((np.array(finding.center_voxel) - truth.center_voxel) * spacing) < 3.0
    assert finding.volume_ml == pytest.approx(truth.size, rel=0.15)
    expected_side = "left" if truth.center_voxel[2] > 63.5 else "right"  # columns run toward patient left
    assert finding.location.startswith(expected_side) and finding.laterality == expected_side[0].upper()
    assert finding.mask.shape == inputs.volume.array.shape and finding.mask.sum() > 0
    assert any("classical baseline" in n for n in result.notes)
    assert any("clinical context is not used" in n for n in result.notes)


@pytest.mark.parametrize("seed", [0, 1, 2, 5])
def test_ich_baseline_ignores_calcifications_on_negatives(seed: int, tmp_path: Path) -> None:
    _, inputs, result = _run("ich_baseline", "head_ct", tmp_path, seed, False, rows=128)
    assert result.findings == [] and not result.positive


def test_ich_negative_seeds_do_contain_calcification_mimics(tmp_path: Path) -> None:
    hot = 0
    for seed in (0, 1, 2, 5):
        inputs = load_inputs(Task.ICH, write_study("head_ct", tmp_path / str(seed), seed=seed, lesion=False,
                                                   rows=128).paths)
        hot += int((inputs.volume.array[:, 20:-20, 20:-20] > 110).sum() > 0)
    assert hot >= 2  # so the test above is about mimics, not about empty brains


@pytest.mark.parametrize("seed", [1, 3])
def test_nodule_baseline_finds_the_nodule_and_its_diameter(seed: int, tmp_path: Path) -> None:
    study, inputs, result = _run("nodule_baseline", "chest_ct", tmp_path, seed, True, rows=256, slices=48)
    truth = study.lesions[0]
    assert result.positive and len(result.findings) == 1
    finding = result.findings[0]
    spacing = np.array(inputs.volume.spacing_mm)
    assert np.linalg.norm((np.array(finding.center_voxel) - truth.center_voxel) * spacing) < 2.0
    assert finding.diameter_mm == pytest.approx(truth.size, abs=1.5)
    assert finding.center_mm == pytest.approx(inputs.volume.voxel_to_patient(finding.center_voxel))


@pytest.mark.parametrize("seed", [0, 2, 4])
def test_nodule_baseline_rejects_vessels_on_negatives(seed: int, tmp_path: Path) -> None:
    _, _, result = _run("nodule_baseline", "chest_ct", tmp_path, seed, False, rows=256, slices=48)
    assert result.findings == [] and not result.positive


def test_mammo_baseline_finds_mass_in_both_views_and_matches_them(tmp_path: Path) -> None:
    study, _, result = _run("mammo_baseline", "mammo", tmp_path, 2, True, rows=256)
    masses = [f for f in result.findings if f.finding_type is FindingType.MASS]
    assert result.positive
    for truth in (t for t in study.lesions if t.kind == "mass"):
        near = [f for f in masses if f.view_index == truth.view_index
                and np.hypot(*np.subtract(f.center_voxel, truth.center_voxel)) * 220 / 256 < 3.0]
        assert near, f"no mass found near the truth in view {truth.view_index}"
        assert near[0].diameter_mm == pytest.approx(truth.size, abs=3.0)
        assert near[0].attributes["corresponding_view_index"] == str(1 - truth.view_index)
    clusters = [f for f in result.findings if f.finding_type is FindingType.CALCIFICATION_CLUSTER]
    assert sorted(f.view_index for f in clusters) == [0, 1]  # seed 2 carries a cluster in truth


@pytest.mark.parametrize("seed", [0, 1, 3, 4])
def test_mammo_baseline_is_negative_on_lesion_free_breasts(seed: int, tmp_path: Path) -> None:
    _, _, result = _run("mammo_baseline", "mammo", tmp_path, seed, False, rows=256)
    assert not result.positive
    assert not [f for f in result.findings if f.finding_type is FindingType.CALCIFICATION_CLUSTER]


def test_mammo_baseline_reads_a_14_bit_exam_with_a_dark_chest_wall_edge_as_the_12_bit_one(tmp_path: Path) -> None:
    _, inputs, result = _run("mammo_baseline", "mammo", tmp_path, 2, True, rows=256)
    for view in inputs.views:  # another detector: four times the grey levels, 3 unexposed columns at the edge
        view.array = view.array * 4.0
        chest_wall = slice(0, 3) if view.array[:, :10].mean() > view.array[:, -10:].mean() else slice(-3, None)
        view.array[:, chest_wall] = 0.0
    shifted = create_detector("mammo_baseline").detect(inputs)
    assert shifted.case_score == pytest.approx(result.case_score, abs=0.05)
    assert sorted((f.finding_type, f.view_index) for f in shifted.findings) == sorted(
        (f.finding_type, f.view_index) for f in result.findings)


def test_registry_lists_every_detector_with_its_task_and_suggests_close_names() -> None:
    assert available_detectors() == {"ich_baseline": Task.ICH, "nodule_baseline": Task.LUNG_NODULE,
                                     "mammo_baseline": Task.MAMMOGRAPHY, "ich_fusion": Task.ICH,
                                     "nodule_fusion": Task.LUNG_NODULE, "mammo_fusion": Task.MAMMOGRAPHY}
    with pytest.raises(UnknownDetectorError, match="did you mean 'ich_baseline'"):
        create_detector("ich_baselin")


def test_device_uid_is_stable_and_changes_with_parameters() -> None:
    from ai_engine.detectors.ich_baseline import IchBaseline, IchParameters

    assert IchBaseline().algorithm.device_uid == create_detector("ich_baseline").algorithm.device_uid
    assert IchBaseline(IchParameters(blood_low_hu=45.0)).algorithm.device_uid != IchBaseline().algorithm.device_uid
    assert IchBaseline().algorithm.kind == "classical baseline"


def test_results_registry_and_synthetic_do_not_import_torch() -> None:
    code = ("import sys, ai_engine.results, ai_engine.detectors.registry, ai_engine.synthetic.studies;"
            "print('torch' in sys.modules, 'monai' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["False", "False"]
