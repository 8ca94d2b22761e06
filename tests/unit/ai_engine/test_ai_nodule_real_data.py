"""Lung-nodule training on a LIDC-IDRI / LUNA16-layout dataset, built here from small synthetic chest phantoms.

One phantom is a DICOM series, one a MetaImage ``.mhd`` + ``.raw`` stored feet-first (z axis against
the slice normal), one a zlib ``.mhd`` + ``.zraw`` stored big-endian and turned in-plane by 90 degrees
(a TransformMatrix that differs from its transpose): only a reader that honours the geometry finds
the annotated nodules (written in world mm from the DICOM volume's ``voxel_to_patient``) on the
phantom's truth voxels.
"""

from __future__ import annotations

import itertools
import json
import re
import shutil
import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pydicom
import pytest

from ai_engine.bundle import load_bundle
from ai_engine.clinical_features import encode_clinical, feature_names
from ai_engine.errors import AiEngineError
from ai_engine.results import Task
from ai_engine.synthetic.chest_ct import ChestAcquisition
from ai_engine.synthetic.cohorts.nodule import NoduleCase, generate_case, write_case_dicom
from ai_engine.training.datasets.lidc_luna import load_case, read_dataset
from ai_engine.training.datasets.metaimage import read_metaimage
from ai_engine.training.note_vocabulary import write_vocabulary
from ai_engine.training.tasks.nodule import evaluate, train
from ai_engine.volume import Volume, load_series

SMALL = ChestAcquisition(rows=128, slices=40, slice_mm=2.5, noise_hu=10.0, blur_mm=0.5)
LUNA_PREFIX = "1.3.6.1.4.1.14519.5.2.1.6279.6001."  # sorts after pydicom's 1.2.826... DICOM series UID
RAW_UID, ZRAW_UID = LUNA_PREFIX + "1.4", LUNA_PREFIX + "2.6"
# DICOM (seed 1, split V: its second nodule has unknown composition and malignancy), .raw (seed 4, split C),
# .zraw (seed 6, split A); the series sort in that order and seed 0 splits three cases that way.
SEEDS = {"dicom": 1, "raw": 4, "zraw": 6}


@dataclass
class Built:
    """The dataset root and, per series UID, its phantom, its DICOM-read volume and its nodules' truth voxels."""

    root: Path
    cases: dict[str, NoduleCase]
    dicom: dict[str, Volume]
    truth: dict[str, list[np.ndarray]]  # (z, y, x) in LPS order, the phantom's grid, however the file is stored


def zraw_voxel(volume: Volume, zyx: np.ndarray) -> np.ndarray:
    """Where DICOM voxel (z, y, x) of ``volume`` lies in the turned .zraw grid: (z, X - 1 - x, y)."""
    z, y, x = zyx
    return np.array([z, volume.array.shape[2] - 1 - x, y])


def write_metaimage(volume: Volume, header: Path, *, compressed: bool) -> None:
    """``volume`` as MetaImage, stored unlike ``load_series``'s order. .raw: feet-first (z axis = -normal, Offset
    at the last slice), little-endian. .zraw: its x index axis runs along world +y and its y index axis along
    world -x (Offset at DICOM voxel (0, 0, X - 1)), big-endian, zlib-compressed."""
    rows, (nz, _, nx), (dz, dy, dx) = volume.direction, volume.array.shape, volume.spacing_mm
    if compressed:
        stored, axes = volume.array[:, :, ::-1].transpose(0, 2, 1), np.stack([rows[1], -rows[0], rows[2]])
        first, spacing = (0, 0, nx - 1), (dy, dx, dz)
    else:
        stored, axes = volume.array[::-1], np.stack([rows[0], rows[1], -rows[2]])
        first, spacing = (nz - 1, 0, 0), (dx, dy, dz)
    data = np.ascontiguousarray(np.rint(stored)).astype(">i2" if compressed else "<i2").tobytes()
    data_file = header.with_suffix(".zraw" if compressed else ".raw")
    data_file.write_bytes(zlib.compress(data) if compressed else data)
    header.write_text("\n".join([
        "ObjectType = Image", "NDims = 3", "BinaryData = True", f"BinaryDataByteOrderMSB = {compressed}",
        f"CompressedData = {compressed}", "TransformMatrix = " + " ".join(f"{v:g}" for v in axes.ravel()),
        "Offset = " + " ".join(repr(v) for v in volume.voxel_to_patient(first)), "CenterOfRotation = 0 0 0",
        "AnatomicalOrientation = RAI", "ElementSpacing = " + " ".join(repr(v) for v in spacing),
        "DimSize = " + " ".join(str(n) for n in stored.shape[::-1]), "ElementType = MET_SHORT",
        f"ElementDataFile = {data_file.name}", ""]))


def _annotation_rows(built: Built) -> list[str]:
    rows = ["seriesuid,coordX,coordY,coordZ,diameter_mm"]
    for uid, case in built.cases.items():
        for nodule in case.nodules:
            x, y, z = built.dicom[uid].voxel_to_patient(nodule.center_voxel)
            rows.append(f"{uid},{x!r},{y!r},{z!r},{nodule.diameter_mm!r}")
    return rows


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> Built:
    root = tmp_path_factory.mktemp("lidc") / "dataset"
    scratch = tmp_path_factory.mktemp("scratch")
    out = Built(root, {}, {}, {})
    for kind, seed in SEEDS.items():
        case = generate_case(seed, acquisition=SMALL, negative_rate=0.0)
        volume = load_series(write_case_dicom(case, scratch / kind))
        truth = [np.array(n.center_voxel) for n in case.nodules]
        if kind == "dicom":
            uid = volume.series_instance_uid
            (root / "series").mkdir(parents=True)
            shutil.move(scratch / kind, root / "series" / uid)
        else:
            uid = RAW_UID if kind == "raw" else ZRAW_UID
            folder = root / ("subset0" if kind == "raw" else "subset1")
            folder.mkdir()
            write_metaimage(volume, folder / f"{uid}.mhd", compressed=kind == "zraw")
        out.cases[uid], out.dicom[uid], out.truth[uid] = case, volume, truth
    (root / "annotations.csv").write_text("\n".join(_annotation_rows(out)) + "\n")
    attributes = ["seriesuid,nodule_index,composition,malignant"]
    for uid, case in out.cases.items():
        for k, nodule in enumerate(case.nodules):
            unknown = uid not in (RAW_UID, ZRAW_UID) and k == 1
            attributes.append(f"{uid},{k},{'' if unknown else nodule.kind},{'' if unknown else int(nodule.malignant)}")
    (root / "nodule_attributes.csv").write_text("\n".join(attributes) + "\n")
    dicom_uid = next(iter(out.cases))
    (root / "clinical.csv").write_text("seriesuid,age,sex,pack_years,smoking_status,prior_cancer,cea,note\n"
                                       f"{dicom_uid},67,F,,former,,2.5,Chronic cough.\n"
                                       f"{RAW_UID},72,M,40,current,1,4.1,\n")
    return out


def test_each_series_knows_its_patient_for_the_splits(built: Built) -> None:
    """A DICOM series names its patient (PatientID), so a patient's scans stay in one split; a MetaImage names
    none and is a patient of its own."""
    patients = {case.series_uid: case.patient for case in read_dataset(built.root)}
    dicom_uid = next(uid for uid in built.cases if uid not in (RAW_UID, ZRAW_UID))
    written = pydicom.dcmread(next((built.root / "series" / dicom_uid).iterdir())).PatientID
    assert patients[dicom_uid] == f"patient {written}"
    assert patients[RAW_UID] == f"series {RAW_UID}" and patients[ZRAW_UID] == f"series {ZRAW_UID}"


def test_metaimage_reads_back_the_dicom_volume(built: Built) -> None:
    dicom = built.dicom[RAW_UID]
    raw = read_metaimage(built.root / "subset0" / f"{RAW_UID}.mhd")
    assert np.array_equal(raw.array, dicom.array)  # feet-first storage flipped back to load_series' order
    assert raw.spacing_mm == pytest.approx(dicom.spacing_mm)
    assert raw.origin_mm == pytest.approx(dicom.origin_mm)
    assert np.allclose(raw.direction, dicom.direction)

    dicom = built.dicom[ZRAW_UID]
    zraw = read_metaimage(built.root / "subset1" / f"{ZRAW_UID}.mhd")
    for corner in itertools.product(*((0, n - 1) for n in dicom.array.shape)):  # each corner where DICOM has it
        turned = tuple(zraw_voxel(dicom, np.array(corner)))
        assert zraw.array[turned] == dicom.array[corner]
        assert zraw.voxel_to_patient(turned) == pytest.approx(dicom.voxel_to_patient(corner))
    assert np.array_equal(zraw.array, dicom.array[:, :, ::-1].transpose(0, 2, 1))


def test_metaimage_with_local_data_reads_the_same_volume(built: Built, tmp_path: Path) -> None:
    folder = built.root / "subset0"
    header = (folder / f"{RAW_UID}.mhd").read_text().replace(f"= {RAW_UID}.raw", "= LOCAL")
    single = tmp_path / "local.mhd"
    single.write_bytes(header.encode() + (folder / f"{RAW_UID}.raw").read_bytes())
    assert np.array_equal(read_metaimage(single).array, built.dicom[RAW_UID].array)


def test_annotated_centres_land_on_the_phantom_truth(built: Built) -> None:
    cases = read_dataset(built.root)
    assert [c.series_uid for c in cases] == list(built.cases)
    for case in cases:
        scan = load_case(case)
        truth = built.cases[case.series_uid].nodules
        assert len(scan.nodules) == len(truth) == len(built.truth[case.series_uid])
        for nodule, expected, drawn in zip(scan.nodules, built.truth[case.series_uid], truth, strict=True):
            assert np.abs(np.array(nodule.center_voxel) - expected).max() < 0.01
            assert scan.labels[tuple(np.rint(expected).astype(int))] == nodule.label
            assert nodule.diameter_mm == pytest.approx(drawn.diameter_mm)
    second = load_case(cases[0]).nodules[1]
    assert (second.kind, second.malignant) == (None, None)  # empty attribute cells stay unknown
    first = load_case(cases[1]).nodules[0]
    assert (first.kind, first.malignant) == (built.cases[RAW_UID].nodules[0].kind, True)


def test_clinical_csv_becomes_the_context_the_encoders_read(built: Built) -> None:
    contexts = {c.series_uid: c.context for c in read_dataset(built.root)}
    names = feature_names(Task.LUNG_NODULE)
    values, present = encode_clinical(Task.LUNG_NODULE, contexts[next(iter(built.cases))])
    assert dict(zip(names, present.tolist(), strict=True)) == {
        "age": True, "sex": True, "pack_years": False, "smoking_status": True, "prior_cancer": False, "cea": True}
    assert values[names.index("age")] == pytest.approx((67 - 60) / 15)
    assert values[names.index("smoking_status")] == pytest.approx(0.5)  # former
    values, present = encode_clinical(Task.LUNG_NODULE, contexts[RAW_UID])
    assert present.all() and values[names.index("prior_cancer")] == 1.0 and values[names.index("sex")] == 1.0
    assert contexts[ZRAW_UID] is None  # no row: no clinical data at all


def _copy(built: Built, tmp_path: Path) -> Path:
    """A dataset root whose images link to ``built``'s and whose tables are copies (to be broken)."""
    root = tmp_path / "dataset"
    root.mkdir()
    for entry in built.root.iterdir():
        if entry.suffix == ".csv":
            shutil.copy(entry, root / entry.name)
        else:
            (root / entry.name).symlink_to(entry, target_is_directory=True)
    return root


def test_series_missing_from_annotations_is_a_nodule_free_scan(built: Built, tmp_path: Path) -> None:
    root = _copy(built, tmp_path)
    (root / "annotations.csv").write_text("\n".join(r for r in _annotation_rows(built) if RAW_UID not in r) + "\n")
    (root / "nodule_attributes.csv").unlink()
    cases = {c.series_uid: c for c in read_dataset(root)}
    scan = load_case(cases[RAW_UID])
    assert scan.nodules == [] and not scan.labels.any()
    assert all(n.malignant is None for c in cases.values() for n in c.nodules)


def _break_raw(root: Path, header_text: str | None = None, data: bytes | None = None) -> str:
    """Replace subset0 by a copy whose header or raw data is changed; returns the raw file's name."""
    original = (root / "subset0").resolve()
    (root / "subset0").unlink()
    shutil.copytree(original, root / "subset0")
    header, raw = root / "subset0" / f"{RAW_UID}.mhd", root / "subset0" / f"{RAW_UID}.raw"
    if header_text is not None:
        header.write_text(header_text)
    if data is not None:
        raw.write_bytes(data)
    return raw.name


@pytest.mark.parametrize("fault", ["no annotations", "missing column", "unknown series", "short raw",
                                   "element type", "ndims", "clinical sex"])
def test_malformed_dataset_is_refused_naming_the_fault(built: Built, tmp_path: Path, fault: str) -> None:
    root = _copy(built, tmp_path)
    annotations = root / "annotations.csv"
    header = (root / "subset0" / f"{RAW_UID}.mhd").read_text()
    if fault == "no annotations":
        annotations.unlink()
        expected = r"annotations\.csv is missing"
    elif fault == "missing column":
        annotations.write_text("\n".join(r.rsplit(",", 1)[0] for r in _annotation_rows(built)) + "\n")
        expected = r"annotations\.csv lacks column\(s\) \['diameter_mm'\]"
    elif fault == "unknown series":
        annotations.write_text(annotations.read_text() + "1.2.3.999,1.0,2.0,3.0,6.0\n")
        expected = r"annotations\.csv line 8: seriesuid '1\.2\.3\.999' has no series"
    elif fault == "short raw":
        raw = (root / "subset0" / f"{RAW_UID}.raw").read_bytes()
        name = _break_raw(root, data=raw[:-2])
        expected = rf"{re.escape(RAW_UID)}\.mhd: DimSize: .*{name} holds {len(raw) - 2} bytes"
    elif fault == "element type":
        _break_raw(root, header_text=header.replace("MET_SHORT", "MET_LONG"))
        expected = r"\.mhd: ElementType: 'MET_LONG' is not one of"
    elif fault == "ndims":
        _break_raw(root, header_text=header.replace("NDims = 3", "NDims = 4"))
        expected = r"\.mhd: NDims: must be 3"
    else:
        (root / "clinical.csv").write_text((root / "clinical.csv").read_text().replace(",M,", ",X,"))
        expected = r"clinical\.csv line 3: column 'sex' must be"
    with pytest.raises(AiEngineError, match=expected):
        for case in read_dataset(root):
            load_case(case)


def test_training_on_the_dataset_writes_a_bundle_that_says_so(built: Built, tmp_path: Path) -> None:
    root = train(out_dir=tmp_path / "nodule_fusion", epochs=None, cohort_size=None, seed=0, quick=True,
                 data_dir=built.root)
    bundle = load_bundle(root.name, root.parent)
    recorded = bundle.metadata["training_data"]
    assert recorded["source"] == "dataset" and recorded["path"] == str(built.root.resolve())
    assert "generator" not in recorded and "synthetic" not in bundle.metadata["intended_use"].lower()
    assert (recorded["cases"], recorded["nodules"], recorded["nodules_with_malignancy"]) == (3, 6, 5)
    assert isinstance(recorded["nodules"], int) and recorded["patients"] == 3  # a count (was 6.0)
    assert (recorded["dicom_series"], recorded["metaimage_series"]) == (1, 2)
    assert recorded["split_cases"] == {"A": 1, "V": 1, "C": 1}
    fusion = bundle.metadata["training"]["fusion"]
    # heads: A (2 nodules) and V (1 of 2: the other's malignancy is unknown); calibration: C's 2 nodules
    assert (fusion["train_rows"], fusion["calibration_rows"]) == (3, 2)
    fitted = bundle.metadata["finding_threshold_fit"]  # on the calibration series: C's one scan, 2 nodules
    assert (fitted["calibration_scans"], fitted["calibration_nodules"]) == (1, 2)
    assert bundle.inference["finding_threshold"] == fitted["threshold"]
    vocabulary = write_vocabulary("nodule", root)  # what `radfusion train nodule --data-dir` writes after training
    assert {"chronic", "cough"} <= vocabulary.terms
    assert load_bundle(root.name, root.parent).note_vocabulary == vocabulary


def test_the_deployed_bundle_is_evaluated_on_the_dataset_through_the_cli(built: Built, tmp_path: Path) -> None:
    """``evaluate nodule --data-dir``: every series (DICOM and MetaImage) through the detector and the baseline;
    the metrics name the dataset and use only the nodules whose composition / malignancy it gives."""
    from ai_engine.training import cli

    with pytest.raises(AiEngineError, match="needs --out-dir"):
        cli.main(["evaluate", "nodule", "--data-dir", str(built.root)])
    assert cli.main(["evaluate", "nodule", "--data-dir", str(built.root), "--out-dir", str(tmp_path)]) == 0
    result = json.loads((tmp_path / "metrics.json").read_text())
    cohort = result["cohort"]
    assert cohort["source"] == "dataset" and cohort["path"] == str(built.root.resolve())
    assert (cohort["cases"], cohort["nodules"], cohort["nodule_free_cases"]) == (3, 6, 0)
    assert set(cohort["tables_sha256"]) == {"annotations.csv", "nodule_attributes.csv", "clinical.csv"}
    assert [(r["case"], r["nodules"], r["format"]) for r in cohort["per_series"]] == [
        (uid, len(case.nodules), "metaimage" if uid in (RAW_UID, ZRAW_UID) else "dicom")
        for uid, case in built.cases.items()]
    for detector in ("nodule_fusion", "nodule_baseline"):
        froc = result["detection"][detector]
        assert 0.0 <= froc["cpm"] <= froc["max_sensitivity"] <= 1.0 and set(froc["sensitivity_at"]) == {
            "0.125", "0.25", "0.5", "1.0", "2.0", "4.0", "8.0"}
    operating = result["detection"]["nodule_fusion"]["at_finding_threshold"]
    assert operating["threshold"] == load_bundle("nodule_fusion").inference["finding_threshold"]
    assert 0.0 <= operating["sensitivity"] <= result["detection"]["nodule_fusion"]["max_sensitivity"]
    known = [n for uid, case in built.cases.items() for k, n in enumerate(case.nodules)
             if uid in (RAW_UID, ZRAW_UID) or k != 1]  # the DICOM series' second nodule has empty attributes
    assert result["malignancy"]["nodules"] == len(known) == 5
    assert result["malignancy"]["malignant"] == sum(n.malignant for n in known)
    assert 0.0 <= result["type_accuracy"] <= 1.0 and "skipped" not in result
    assert (tmp_path / "froc.png").is_file() and (tmp_path / "roc_malignancy.png").is_file()


def test_evaluation_without_nodule_attributes_reports_the_metrics_it_cannot_compute(built: Built,
                                                                                    tmp_path: Path) -> None:
    root = tmp_path / "dataset"
    root.mkdir()
    (root / "subset0").symlink_to(built.root / "subset0", target_is_directory=True)
    (root / "annotations.csv").write_text("\n".join(r for r in _annotation_rows(built)
                                                    if r.startswith(("seriesuid", RAW_UID))) + "\n")
    result = evaluate(bundle=None, cohort_size=None, seed=None, out_dir=tmp_path / "out", data_dir=root)
    assert (result["cohort"]["cases"], result["cohort"]["nodules"]) == (1, len(built.cases[RAW_UID].nodules))
    assert result["type_accuracy"] is None and result["malignancy"]["auc"] is None
    assert result["fusion_experiment"] is None and result["malignancy"]["nodules"] == 0
    assert result["skipped"] == {"type_accuracy": "no nodule of known composition",
                                 "malignancy": "malignancy needs benign and malignant nodules; 0 of known "
                                               "malignancy, 0 malignant",
                                 "fusion_experiment": "malignancy needs benign and malignant nodules; 0 of known "
                                                      "malignancy, 0 malignant"}
    assert json.loads((tmp_path / "out" / "metrics.json").read_text())["skipped"] == result["skipped"]
    assert not (tmp_path / "out" / "roc_malignancy.png").exists()
