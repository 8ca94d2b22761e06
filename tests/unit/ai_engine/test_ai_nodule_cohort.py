"""Nodule cohort: phantoms draw what was asked where it was asked; clinical data follow the stated model."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from scipy import ndimage

from ai_engine.clinical_features import encode_clinical, feature_names
from ai_engine.errors import SyntheticError
from ai_engine.results import Task
from ai_engine.synthetic.chest_ct import ChestAcquisition, NoduleSpec, make_chest_phantom
from ai_engine.synthetic.cohorts.nodule import generate_case, write_case_dicom
from ai_engine.volume import load_series
from tests.peers import dciodvfy_errors

SMALL = ChestAcquisition(rows=160, slices=60, slice_mm=2.5, noise_hu=10.0, blur_mm=0.5)


def _phantom(seed: int, specs: list[NoduleSpec]):  # noqa: ANN202
    return make_chest_phantom(np.random.default_rng(seed), SMALL, specs)


def test_nodule_types_have_their_densities() -> None:
    phantom = _phantom(1, [NoduleSpec(14.0, "solid"), NoduleSpec(14.0, "ground-glass"),
                           NoduleSpec(16.0, "part-solid", solid_core_fraction=0.6)])
    solid, glass, part = (phantom.hu[phantom.labels == n.label] for n in phantom.nodules)
    assert np.median(solid) > -150 and -800 < np.median(glass) < -400
    assert np.percentile(glass, 95) < -300 < -200 < np.percentile(part, 95)  # only part-solid has a solid core
    assert all(n.truth.subtype == n.spec.kind for n in phantom.nodules)


def test_juxtapleural_nodule_touches_the_chest_wall_and_parenchymal_does_not() -> None:
    phantom = _phantom(2, [NoduleSpec(10.0, placement="juxtapleural"), NoduleSpec(10.0, placement="parenchymal")])
    outside = ~ndimage.binary_dilation(phantom.lungs, iterations=1) | ~phantom.lungs
    wall_contact = [bool((ndimage.binary_dilation(phantom.labels == n.label, iterations=2) & outside).any())
                    for n in phantom.nodules]
    assert wall_contact == [True, False]


def test_juxtavascular_nodule_touches_a_vessel() -> None:
    phantom = _phantom(3, [NoduleSpec(8.0, placement="juxtavascular")])
    nodule = phantom.labels == 1
    ring = ndimage.binary_dilation(nodule, iterations=2) & ~nodule & phantom.lungs
    assert (phantom.hu[ring] > -300).mean() > 0.02  # vessel tissue right next to the nodule


def test_vessels_branch_through_both_lungs_on_a_nodule_free_scan() -> None:
    phantom = _phantom(4, [])
    assert phantom.nodules == [] and not phantom.labels.any()
    vessels = (phantom.hu > -300) & phantom.lungs
    labels, count = ndimage.label(vessels)
    assert count > 20  # many vessel cross-sections: the mimics a detector must reject


def test_bad_nodule_spec_is_refused_with_the_value() -> None:
    with pytest.raises(SyntheticError, match="granular"):
        NoduleSpec(8.0, kind="granular")


def test_case_is_deterministic_and_carries_clinical_features() -> None:
    first, again = generate_case(11, acquisition=SMALL), generate_case(11, acquisition=SMALL)
    assert np.array_equal(first.phantom.hu, again.phantom.hu) and first.note == again.note
    values, present = encode_clinical(Task.LUNG_NODULE, first.context)
    assert len(values) == len(feature_names(Task.LUNG_NODULE))
    if first.context.status != "unavailable":
        assert present[feature_names(Task.LUNG_NODULE).index("age")]


def test_cohort_risk_factors_raise_malignancy() -> None:
    cases = [generate_case(seed, acquisition=SMALL, negative_rate=0.0) for seed in range(40)]
    nodules = [(n, c.patient) for c in cases for n in c.nodules]
    heavy = [n.malignant for n, p in nodules if p.pack_years > 30 or p.prior_cancer]
    light = [n.malignant for n, p in nodules if p.pack_years == 0 and not p.prior_cancer]
    assert heavy and light and np.mean(heavy) > np.mean(light)


def test_case_written_as_dicom_loads_back_with_its_hu(tmp_path: Path) -> None:
    case = generate_case(5, acquisition=SMALL)
    paths = write_case_dicom(case, tmp_path)
    volume = load_series(paths)
    assert volume.array.shape == case.phantom.hu.shape
    assert np.abs(volume.array - np.rint(case.phantom.hu)).max() <= 1.0
    assert volume.spacing_mm == pytest.approx(case.phantom.spacing)
    assert dciodvfy_errors(paths[len(paths) // 2]) == []
