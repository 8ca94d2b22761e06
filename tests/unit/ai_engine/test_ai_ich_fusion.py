"""ICH deep fusion detector: training steps, ONNX/eager parity, obvious bleeds found, empty heads quiet."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from ai_engine.bundle import load_bundle
from ai_engine.detectors import ich_fusion
from ai_engine.detectors.head_input import head_side
from ai_engine.detectors.registry import create_detector
from ai_engine.inputs import load_inputs
from ai_engine.results import FindingType, Task
from ai_engine.synthetic.cohorts.ich import IchCase, generate_case, write_case_dicom
from ai_engine.synthetic.head_ct import HeadAcquisition, HemorrhageSpec, make_head_case
from ai_engine.synthetic.studies import write_study

SMALL = HeadAcquisition(rows=160, slice_mm=5.0, coverage_mm=150.0)


pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def detector() -> ich_fusion.IchFusion:
    return create_detector("ich_fusion")  # type: ignore[return-value]


def _case(tmp_path: Path, seed: int, bleeds: list[HemorrhageSpec]) -> tuple[IchCase, list[Path]]:
    head = make_head_case(np.random.default_rng(seed), SMALL, bleeds)
    case = IchCase(f"ICH{seed:09d}", head.hu, head.labels, head.spacing, head.truths, None, None,
                   int(bool(head.truths)), 70.0, "M")
    return case, write_case_dicom(case, tmp_path / str(seed))


def test_a_few_training_steps_change_the_network(tmp_path: Path) -> None:
    from ai_engine.training.tasks import ich

    cases = [generate_case(i, acquisition=HeadAcquisition(rows=96, coverage_mm=60.0)) for i in range(3)]
    data = ich.build_arrays(cases)
    torch.manual_seed(0)
    before = [p.detach().clone() for p in ich_fusion.build_network().parameters()]
    network = ich._train_network(data, np.arange(3), np.arange(3), epochs=1, seed=0, quick=True)  # noqa: SLF001
    after = list(network.parameters())
    assert any(not torch.equal(a, b) for a, b in zip(before, after, strict=True))
    assert all(torch.isfinite(p).all() for p in after)


def test_onnx_runtime_matches_eager_pytorch() -> None:
    """Deployed ONNX vs eager weights: logits agree within 1e-3 absolute (float32 kernels differ)."""
    import onnxruntime as ort

    bundle = load_bundle("ich_fusion")
    eager = ich_fusion.load_eager_model(bundle)
    rng = np.random.default_rng(0)
    slabs = rng.uniform(0.0, 1.0, (3, ich_fusion.IN_CHANNELS, 128, 128)).astype(np.float32)
    session = ort.InferenceSession(str(bundle.deployed_path), providers=["CPUExecutionProvider"])
    with torch.no_grad():
        expected = eager.network(torch.from_numpy(slabs)).numpy()
    assert np.abs(session.run(None, {"slabs": slabs})[0] - expected).max() < 1e-3
    fusion = ort.InferenceSession(str(bundle.root / "models" / "fusion.onnx"), providers=["CPUExecutionProvider"])
    features = rng.normal(size=(2, len(ich_fusion.IMAGE_FEATURES))).astype(np.float32)
    clinical, present, note, note_present = ich_fusion.fusion_inputs(None, "hashed-terms", None)
    feeds = {"image": features, "clinical": np.repeat(clinical, 2, 0), "clinical_present": np.repeat(present, 2, 0),
             "text": np.repeat(note, 2, 0), "text_present": np.repeat(note_present, 2, 0)}
    with torch.no_grad():
        eager_out = eager.fusion.forward_tensors(*(torch.from_numpy(feeds[k]) for k in feeds))
    for got, want in zip(fusion.run(None, feeds), eager_out, strict=True):
        assert np.abs(got - want.numpy()).max() < 1e-4


def test_flip_average_makes_the_map_of_a_symmetric_head_symmetric() -> None:
    """A network that favours one side gives a left-right symmetric map of a symmetric slab stack once the
    mirror image is averaged in; batching does not change the result."""
    ramp = np.linspace(-3.0, 3.0, ich_fusion.MODEL_SIZE, dtype=np.float32)

    def run(inputs: np.ndarray) -> np.ndarray:
        logits = np.zeros((len(inputs), ich_fusion.N_CLASSES, *inputs.shape[-2:]), dtype=np.float32)
        logits[:, 1] = ramp + inputs[:, 1]
        return logits

    slabs = np.full((3, ich_fusion.MODEL_SIZE, ich_fusion.MODEL_SIZE), 40.0, dtype=np.float32)
    plain, averaged = ich_fusion.segment(run, slabs, 16, False), ich_fusion.segment(run, slabs, 1, True)
    assert not np.allclose(plain, plain[..., ::-1])
    assert np.allclose(averaged, averaged[..., ::-1], atol=1e-6)
    assert np.allclose(averaged.sum(axis=1), 1.0, atol=1e-6)


@pytest.mark.parametrize(("seed", "subtype", "side"), [
    (1, "intraparenchymal", 1.0),
    pytest.param(2, "subdural", -1.0, marks=pytest.mark.xfail(
        strict=True, reason="known weakness of the U-Net (bundle 1.8.0, model card): without clinical context "
                            "this thin 23 mL crescent scores 0.38, below the 0.73 threshold, and is not reported")),
])
def test_obvious_bleed_is_found_on_its_side_with_its_volume(detector: ich_fusion.IchFusion, tmp_path: Path,
                                                            seed: int, subtype: str, side: float) -> None:
    case, paths = _case(tmp_path, seed, [HemorrhageSpec(subtype, 25.0, 70.0, side)])
    result = detector.detect(load_inputs(Task.ICH, paths))
    assert result.positive and "trained" in result.algorithm.kind
    finding = result.findings[0]
    truth_ml = case.truths[0].size
    assert finding.finding_type is FindingType.HEMORRHAGE
    assert 0.6 * truth_ml < finding.volume_ml < 1.6 * truth_ml
    assert finding.location.startswith("left" if side > 0 else "right")
    assert finding.laterality == ("L" if side > 0 else "R")
    assert finding.attributes["subtype"] == subtype
    assert finding.mask.shape == case.hu.shape and finding.heatmap.shape == case.hu.shape
    assert 0.0 <= finding.heatmap.min() and finding.heatmap.max() <= 1.0
    assert finding.modality_weights == {"image": 1.0, "clinical": 0.0, "text": 0.0}  # no context given
    assert "logit_sd" in finding.measurements


@pytest.mark.parametrize("seed", [11, 12, 13])
def test_empty_head_reports_nothing(detector: ich_fusion.IchFusion, tmp_path: Path, seed: int) -> None:
    _, paths = _case(tmp_path, seed, [])
    result = detector.detect(load_inputs(Task.ICH, paths))
    assert not result.positive and result.findings == []


def test_demo_phantom_of_the_server_is_read_correctly(detector: ich_fusion.IchFusion, tmp_path: Path) -> None:
    """The simple phantom of write_study (another generator than the training one) in both directions."""
    bleed = write_study("head_ct", tmp_path / "bleed", seed=0, rows=128)
    clean = write_study("head_ct", tmp_path / "clean", seed=1, rows=128, lesion=False)
    assert detector.detect(load_inputs(Task.ICH, bleed.paths)).positive
    assert not detector.detect(load_inputs(Task.ICH, clean.paths)).positive


def test_clinical_context_gives_weights_over_three_modalities(detector: ich_fusion.IchFusion) -> None:
    case = generate_case(5, acquisition=SMALL)
    image_features = np.zeros(len(ich_fusion.IMAGE_FEATURES), dtype=np.float32)
    fused = detector.fusion_stage(image_features, case.context)
    assert sum(fused.weights.values()) == pytest.approx(1.0, abs=1e-3)
    assert fused.weights["clinical"] > 0.0 and 0.0 <= fused.probability <= 1.0 and fused.logit_sd > 0.0


def test_synthetic_training_gives_the_heads_the_extra_patients(tmp_path: Path) -> None:
    """The quick synthetic run: the U-Net's splits come from the cohort's first patients, the fusion heads
    also learn from the further ones and from an artifact copy of each, and the bundle records them and turns
    flip averaging on."""
    import json

    from ai_engine.training.tasks import ich

    root = ich.train(out_dir=tmp_path / "bundle", epochs=None, cohort_size=None, seed=0, quick=True)
    metadata = json.loads((root / "configs" / "metadata.json").read_text())
    recorded = metadata["training_data"]
    splits = recorded["splits"]
    assert recorded["cases"] == ich.QUICK_SIZE == sum(splits[name] for name in ich.SPLITS)
    assert recorded["fusion_extra_cases"] == splits[ich.FUSION_EXTRA_SPLIT] == ich.QUICK_FUSION_EXTRA > 0
    head_cases = splits["V"] + splits["B"] + ich.QUICK_FUSION_EXTRA
    assert metadata["fusion"]["artifact_copies"]["rows"] == head_cases
    assert metadata["fusion"]["train_rows"] == 2 * head_cases  # each once as acquired, once with CT artifacts
    assert json.loads((root / "configs" / "inference.json").read_text())["flip_average"] is True


@pytest.mark.parametrize("name", ["ich_fusion", "ich_baseline"])
def test_a_series_of_a_few_slices_is_refused_and_a_short_one_says_how_little_it_covers(
        tmp_path: Path, name: str) -> None:
    """Two slices of a bleeding head scored a plain negative, with nothing said about what was not searched."""
    import pydicom

    from ai_engine.errors import DetectorInputError

    paths = sorted(write_study("head_ct", tmp_path, seed=4, lesion=True, rows=64, slices=8).paths,
                   key=lambda p: float(pydicom.dcmread(p, stop_before_pixels=True).ImagePositionPatient[2]))
    found = create_detector(name)
    with pytest.raises(DetectorInputError, match=r"covers 10.0 mm along the body axis, less than 30 mm"):
        found.detect(load_inputs(Task.ICH, paths[-2:]))
    notes = found.detect(load_inputs(Task.ICH, paths)).notes
    assert "the series covers only 40 mm along the body axis (a head CT covers 100 mm or more): nothing outside " \
           "it was searched" in notes


def test_the_coverage_of_a_tilted_series_is_measured_along_the_table() -> None:
    """Tilted by 30 degrees, 7 slices 5 mm apart on the table lie 4.33 mm apart along their normal: they cover 35 mm
    of the head, not 30.3."""
    from ai_engine.detectors.head_input import head_ct_notes
    from ai_engine.volume import Volume

    tilt = np.radians(30.0)
    volume = Volume(array=np.zeros((7, 8, 8), dtype=np.float32), spacing_mm=(5.0 * np.cos(tilt), 1.0, 1.0),
                    origin_mm=(0.0, 0.0, 0.0), direction=np.array([[1.0, 0, 0], [0, np.cos(tilt), -np.sin(tilt)],
                                                                   [0, np.sin(tilt), np.cos(tilt)]]),
                    sop_instance_uids=[], paths=[], series_instance_uid="1.2", study_instance_uid="1.2",
                    shear_mm=(0.0, -5.0 * np.sin(tilt) * np.cos(tilt), 5.0 * np.sin(tilt) ** 2))
    assert head_ct_notes(volume, "ich_fusion") == [
        "the series covers only 35 mm along the body axis (a head CT covers 100 mm or more): nothing outside it was "
        "searched"]


def test_a_bleed_across_the_midline_is_called_midline_not_a_side() -> None:
    """A falx or third-ventricle bleed took the side its centre fell to by a fraction of a millimetre: left in one
    run, right in the next."""
    midline = 63.5
    assert head_side(np.array([40, 45, 50, 55, 70]), midline) == "R"  # columns run toward the patient's left
    assert head_side(np.array([70, 80, 90, 95, 50]), midline) == "L"
    assert head_side(np.array([60, 62, 64, 66, 68, 58]), midline) == "B"


def _bone_kernel_like(tmp_path: Path, noise_hu: float, sharpen: float) -> list[Path]:
    """A bleed-free head as a sharp kernel shows it: ``noise_hu`` of pixel noise, edges enhanced by an unsharp
    mask of strength ``sharpen``."""
    from scipy import ndimage

    acquisition = HeadAcquisition(rows=128, slice_mm=5.0, coverage_mm=120.0, noise_hu=noise_hu, kernel_mm=0.1)
    head = make_head_case(np.random.default_rng(3), acquisition)
    hu = head.hu + sharpen * (head.hu - ndimage.gaussian_filter(head.hu, sigma=(0.0, 1.5, 1.5)))
    case = IchCase("ICH000000003", hu, head.labels, head.spacing, [], None, None, 0, 70.0, "M")
    return write_case_dicom(case, tmp_path)


@pytest.mark.parametrize("name", ["ich_fusion", "ich_baseline"])
def test_a_bone_kernel_series_is_refused_for_its_noise(tmp_path: Path, name: str) -> None:
    """A bone-kernel reconstruction of a bleed-free head (40 HU of edge-enhanced noise) was read and paged as a
    3-focus hemorrhage by ich_fusion, and ich_baseline paged 11 of 12 such heads at 18-24 HU (a review); the
    default routing sent every CT series of a head to them."""
    from ai_engine.errors import DetectorInputError

    paths = _bone_kernel_like(tmp_path, noise_hu=12.0, sharpen=1.0)  # measures ~19 HU: ich_baseline paged such heads
    with pytest.raises(DetectorInputError, match=r"pixel noise in the brain is \d+ HU, more than 14 HU: a bone or "
                                                 r"edge-enhancing kernel, or very thin slices\?"):
        create_detector(name).detect(load_inputs(Task.ICH, paths))


def test_the_result_says_when_the_image_is_noisier_than_the_validated_protocols(tmp_path: Path) -> None:
    from ai_engine.detectors.head_input import brain_noise_hu, head_ct_notes

    noisy = load_inputs(Task.ICH, _bone_kernel_like(tmp_path / "noisy", noise_hu=14.0, sharpen=0.0)).volume
    usual = load_inputs(Task.ICH, _bone_kernel_like(tmp_path / "usual", noise_hu=5.0, sharpen=0.0)).volume
    assert 10.0 < brain_noise_hu(noisy) < 13.0 and 4.0 < brain_noise_hu(usual) < 6.0
    assert head_ct_notes(noisy, "ich_fusion") == [
        f"pixel noise in the brain is {brain_noise_hu(noisy):.0f} HU, more than the 8 HU of the noisiest held-out "
        f"protocol: accuracy at this noise was not measured (model card)"]
    assert head_ct_notes(usual, "ich_fusion") == []
