"""The CBIS-DDSM reader and ``train mammo --data-dir``, on a tiny dataset in the real TCIA layout.

Sixteen synthetic exams (0.8 mm phantoms) in the train tables and four more in the test tables are
written the way TCIA ships CBIS-DDSM: full mammograms
and ROI masks as header-poor DICOM (no pixel spacing, laterality or view) in Subject ID folders whose
study/series folder names do not match the tables' UIDs (except for some), mask and crop as 1-1/1-2 in
either order, mass and calc tables with their two spellings of the density column, a path cell with a
trailing newline, and one row with the mask and crop paths swapped.
"""

from __future__ import annotations

import csv
import json
import shutil
import zlib
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pydicom
import pytest
from pydicom.uid import generate_uid

from ai_engine.clinical_features import feature_names
from ai_engine.errors import AiEngineError
from ai_engine.mammo import load_view
from ai_engine.synthetic.cohorts.mammo import generate_case
from ai_engine.synthetic.dicom_writer import StudyHeader, write_mammo_view
from ai_engine.synthetic.mammo_phantom import MALIGNANT_KINDS, Acquisition
from ai_engine.training.datasets import cbis_ddsm
from ai_engine.training.note_vocabulary import write_vocabulary
from ai_engine.training.tasks.mammo import real_exam_arrays, train, train_density_only

SPACING = 0.8
ACQ = Acquisition(pixel_spacing_mm=SPACING)
CANCERS = (10, 12, 15, 16, 20, 29, 31, 37)  # 37: mass and cluster in the same views (both tables)
NEGATIVES = (2, 3, 7, 9, 11, 13, 21, 24)  # cysts, lymph nodes, benign calcifications only
TEST_SEEDS = (43, 46, 44, 50)  # the test tables: a mass, a cluster, two benign-only exams (patients 17-20)
ONE_VIEW = {3, 7}  # patients (1-based) with a CC view only
TRIMMED_MLO = 4  # patient whose MLO is 24 rows shorter than its CC (views of different shapes)
SWAPPED = 2  # patient whose first row has the mask and crop paths swapped (a known TCIA table error)
STRIP = ("PixelSpacing", "ImagerPixelSpacing", "ImageLaterality", "ViewPosition", "ViewCodeSequence",
         "PatientOrientation")
MASS_COLUMNS = ["patient_id", "breast_density", "left or right breast", "image view", "abnormality id",
                "abnormality type", "mass shape", "mass margins", "assessment", "pathology", "subtlety",
                "image file path", "cropped image file path", "ROI mask file path"]
CALC_COLUMNS = ["patient_id", "breast density", "left or right breast", "image view", "abnormality id",
                "abnormality type", "calc type", "calc distribution", "assessment", "pathology", "subtlety",
                "image file path", "cropped image file path", "ROI mask file path"]
MASS_TABLE, CALC_TABLE = cbis_ddsm.CASE_TABLES["train"]
SUBJECT_SPLIT = {"train": "Training", "test": "Test"}  # the Subject ID folders' spelling of the split
MASS_LIKE = ("mass", "cyst", "lymph_node")  # phantom kinds written to the mass table; the rest are calcifications


@dataclass
class Truth:
    """What the builder wrote for one patient."""

    seed: int
    label: int
    density: str
    identities: list[tuple[str, str]] = field(default_factory=list)
    full: dict[tuple[str, str], Path] = field(default_factory=dict)
    masks: list[Path] = field(default_factory=list)
    lesions: list[tuple[int, str, tuple[float, float], bool]] = field(default_factory=list)  # view, kind, centre


def _write(image: np.ndarray, path: Path, laterality: str, view: str) -> None:
    """A header-poor DICOM as CBIS-DDSM ships it: no spacing, laterality or view."""
    header = StudyHeader("P", "P", "A1", generate_uid(), "20160720", "120000", "19500101", "F")
    written = write_mammo_view(image, SPACING, path.parent, header, laterality=laterality, view=view,
                               series_uid=generate_uid(), instance_number=1)
    ds = pydicom.dcmread(written)
    written.unlink()
    for keyword in STRIP:
        delattr(ds, keyword)
    ds.save_as(path, enforce_file_format=True)


def _disk(shape: tuple[int, ...], centre: tuple[float, ...], radius: float) -> np.ndarray:
    rows, cols = np.ogrid[:shape[0], :shape[1]]
    return (rows - centre[0]) ** 2 + (cols - centre[1]) ** 2 <= radius**2


def _uid_path(subject: str, series: str) -> str:
    return f"{subject}/1.3.6.1.4.1.9590.100.1.2.{zlib.crc32(subject.encode())}/{series}/000000.dcm"


def _write_full(root: Path, subject: str, series: str, number: int, image: np.ndarray, lat: str, view: str) -> Path:
    """The full mammogram under its Subject ID folder; even patients' series folders carry the UID."""
    folder = root / "CBIS-DDSM" / subject / "07-20-2016-DDSM-74994"
    folder /= series if number % 2 == 0 else f"1.000000-full mammogram images-{number}"
    if not (folder / "1-1.dcm").exists():
        folder.mkdir(parents=True)
        _write(image, folder / "1-1.dcm", lat, view)
    return folder / "1-1.dcm"


def _write_roi(root: Path, subject: str, series: str, number: int, mask: np.ndarray, crop: np.ndarray, lat: str,
               view: str) -> Path:
    """Mask (0/255) and crop: even patients in two series folders named with the UIDs, odd ones in one
    folder as 1-1 / 1-2 in either order. Returns the mask's path."""
    study = root / "CBIS-DDSM" / subject / "08-29-2017-DDSM-96009"
    if number % 2 == 0:
        mask_path, crop_path = study / series / "1-1.dcm", study / f"{series}0" / "1-1.dcm"
    else:
        names = ("1-1.dcm", "1-2.dcm") if number % 4 == 1 else ("1-2.dcm", "1-1.dcm")
        mask_path, crop_path = (study / f"1.000000-ROI mask images-{number}" / name for name in names)
    for path, image in ((mask_path, mask.astype(np.float32) * 255.0), (crop_path, crop)):
        path.parent.mkdir(parents=True, exist_ok=True)
        _write(image, path, lat, view)
    return mask_path


def _build(root: Path, seeds: tuple[int, ...], split: str = "train", first: int = 1
           ) -> tuple[dict[str, Truth], list[dict[str, str]], list[dict[str, str]]]:
    """Patients ``first``, ``first`` + 1, ... from ``seeds`` into the split's tables and Subject ID folders."""
    mass_table, calc_table = cbis_ddsm.CASE_TABLES[split]
    tables: dict[str, list[dict[str, str]]] = {mass_table: [], calc_table: []}
    truths: dict[str, Truth] = {}
    for number, seed in enumerate(seeds, start=first):
        case = generate_case(seed, ACQ)
        patient = f"P_{number:05d}"
        truth = truths[patient] = Truth(seed, int(case.cancer), case.density)
        views = sorted({t.view_index for t in case.lesions if number not in ONE_VIEW or t.view_index % 2 == 0})
        for v in views:
            lat, view, image = case.views()[v]
            image = image[:-24] if number == TRIMMED_MLO and view == "MLO" else image
            truth.identities.append((lat, view))
            lesions = sorted((t for t in case.lesions if t.view_index == v), key=lambda t: t.kind not in MASS_LIKE)
            for abnormality, lesion in enumerate(lesions, start=1):
                is_mass, malignant = lesion.kind in MASS_LIKE, lesion.kind in MALIGNANT_KINDS
                subject = (f"{'Mass' if is_mass else 'Calc'}-{SUBJECT_SPLIT[split]}_{patient}_"
                           f"{'LEFT' if lat == 'L' else 'RIGHT'}_{view}")
                series = f"1.3.6.1.4.1.9590.100.1.2.{number}{v}"
                truth.full.setdefault((lat, view), _write_full(root, subject, series, number, image, lat, view))
                assert lesion.center_voxel[0] < image.shape[0] - 4  # trimming kept the lesion
                mask = (case.cancer_masks()[v][lesion.kind][:image.shape[0]] if malignant
                        else _disk(image.shape, lesion.center_voxel, 3.0 / SPACING))
                r, c = (int(x) for x in lesion.center_voxel)
                roi_series = f"{series}{abnormality}9"
                truth.masks.append(_write_roi(root, f"{subject}_{abnormality}", roi_series, number, mask,
                                              image[max(r - 20, 0):r + 20, max(c - 20, 0):c + 20], lat, view))
                truth.lesions.append((len(truth.identities) - 1, lesion.kind, lesion.center_voxel, malignant))
                cells = [_uid_path(f"{subject}_{abnormality}", roi_series + suffix) for suffix in ("", "0")]
                if number == SWAPPED and abnormality == 1:
                    cells.reverse()
                tables[mass_table if is_mass else calc_table].append({
                    "patient_id": patient, "breast_density" if is_mass else "breast density":
                        str("ABCD".index(case.density) + 1),
                    "left or right breast": "LEFT" if lat == "L" else "RIGHT", "image view": view,
                    "abnormality id": str(abnormality), "abnormality type": "mass" if is_mass else "calcification",
                    "pathology": ("MALIGNANT" if malignant else
                                  "BENIGN_WITHOUT_CALLBACK" if number % 3 == 0 else "BENIGN"),
                    "image file path": _uid_path(subject, series) + ("\n" if number == 5 else ""),
                    "ROI mask file path": cells[0], "cropped image file path": cells[1]})
    _write_tables(root, tables[mass_table], tables[calc_table], split=split)
    return truths, tables[mass_table], tables[calc_table]


def _write_tables(root: Path, masses: list[dict[str, str]], calcs: list[dict[str, str]],
                  mass_columns: list[str] = MASS_COLUMNS, split: str = "train") -> None:
    mass_table, calc_table = cbis_ddsm.CASE_TABLES[split]
    for name, rows, columns in ((mass_table, masses, mass_columns), (calc_table, calcs, CALC_COLUMNS)):
        with (root / name).open("w", newline="") as handle:
            writer = csv.DictWriter(handle, columns, extrasaction="ignore")
            writer.writeheader()
            writer.writerows(rows)


CLINICAL = ("patient_id,age,brca,family_history,prior_biopsy,note\n"
            "P_00001,62,1,,0,palpable lump left breast\n"
            "P_00002,,,1,1,\n"
            "P_00003,50,0,0,0,\n")


@pytest.fixture(scope="module")
def dataset(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, Truth], list, list]:
    root = tmp_path_factory.mktemp("cbis")
    truths, masses, calcs = _build(root, CANCERS + NEGATIVES)
    (root / "clinical.csv").write_text(CLINICAL)
    return root, truths, masses, calcs


@pytest.fixture(scope="module")
def loaded(dataset: tuple) -> dict[str, cbis_ddsm.RealMammoExam]:
    _, exams = cbis_ddsm.load_exams(dataset[0], pixel_spacing_mm=SPACING)
    return {e.patient_id: e for e in exams}


def test_reader_finds_each_full_image_and_mask_whatever_the_folder_and_file_names(dataset: tuple) -> None:
    root, truths, _, _ = dataset
    exams = {e.patient_id: e for e in cbis_ddsm.index_exams(root)}
    assert sorted(exams) == sorted(truths)
    for patient, truth in truths.items():
        views = exams[patient].views
        assert [(v.laterality, v.view) for v in views] == truth.identities
        assert {(v.laterality, v.view): v.image for v in views} == truth.full
        assert sorted(m for v in views for _, m in v.masks) == sorted(truth.masks)


def test_laterality_view_and_spacing_come_from_the_tables_and_the_caller(dataset: tuple, loaded: dict) -> None:
    root, truths, _, _ = dataset
    path = truths["P_00001"].full[truths["P_00001"].identities[0]]
    assert not {"ImageLaterality", "ViewPosition", "PixelSpacing"} & set(pydicom.dcmread(path).dir())
    with pytest.raises(AiEngineError, match="PixelSpacing"):
        load_view(path)  # serving still demands the header
    assert [(v.laterality, v.view) for v in loaded["P_00004"].views] == truths["P_00004"].identities
    assert {v.pixel_spacing_mm for e in loaded.values() for v in e.views} == {(SPACING, SPACING)}
    default = cbis_ddsm.load_exam(cbis_ddsm.index_exams(root)[0], loaded["P_00001"].context)
    assert default.views[0].pixel_spacing_mm == (0.05, 0.05)


def test_an_annotation_that_contradicts_the_header_s_laterality_or_view_is_refused(dataset: tuple, tmp_path: Path) -> None:
    """A hospital export keeps Image Laterality; a table row edited to the other breast silently won before (the
    label then lay on the mirror image of the lesion's breast)."""
    _, truths, _, _ = dataset
    laterality, view = truths["P_00001"].identities[0]
    ds = pydicom.dcmread(truths["P_00001"].full[(laterality, view)])
    ds.ImageLaterality = laterality
    ds.save_as(tmp_path / "view.dcm")
    assert load_view(tmp_path / "view.dcm", identity=(laterality, view), fallback_spacing_mm=SPACING).laterality \
        == laterality
    other = "R" if laterality == "L" else "L"
    with pytest.raises(AiEngineError, match=f"annotation says laterality {other} but its header says {laterality}"):
        load_view(tmp_path / "view.dcm", identity=(other, view), fallback_spacing_mm=SPACING)
    ds.ViewPosition = view
    ds.save_as(tmp_path / "view.dcm")
    swapped = "MLO" if view == "CC" else "CC"
    with pytest.raises(AiEngineError, match=f"annotation says view {swapped} but its header says {view}"):
        load_view(tmp_path / "view.dcm", identity=(laterality, swapped), fallback_spacing_mm=SPACING)


def test_labels_density_and_benign_centres_follow_the_tables(dataset: tuple, loaded: dict) -> None:
    _, truths, _, _ = dataset
    for patient, truth in truths.items():
        exam = loaded[patient]
        assert (exam.label, exam.density) == (truth.label, truth.density), patient
        benign = [(v, centre) for v, kind, centre, malignant in truth.lesions if not malignant]
        assert len(exam.mimic_centres) == len(benign)
        for (v, centre), (view, row, col) in zip(sorted(benign), sorted(exam.mimic_centres), strict=True):
            assert view == v and abs(row - centre[0]) <= 1.0 and abs(col - centre[1]) <= 1.0, patient
        if not truth.label:
            assert not any(m.any() for masks in exam.cancer_masks for m in masks.values())
    assert {t.density for t in truths.values()} == {"A", "B", "C", "D"}


def test_malignant_targets_on_the_network_grid_cover_the_phantom_lesion(dataset: tuple, loaded: dict) -> None:
    _, truths, _, _ = dataset
    # mass (mask/crop paths swapped in the table), cluster (CC only), cluster (MLO trimmed), mass + cluster
    for patient in ("P_00002", "P_00003", "P_00004", "P_00008"):
        arrays = real_exam_arrays(loaded[patient])
        assert arrays.identities == tuple(truths[patient].identities)
        for v, kind, (row, col), malignant in truths[patient].lesions:
            if not malignant:
                continue
            view = arrays.views[v]  # at 0.8 mm the network grid is the source grid (flipped when R)
            r, c = int(round(row)), int(round(col))
            c = view.net_shape[1] - 1 - c if view.flipped else c
            channel = MALIGNANT_KINDS.index(kind)
            assert arrays.targets[v][channel, r - 1:r + 2, c - 1:c + 2].any(), (patient, v, kind)
            assert not arrays.targets[v][1 - channel].any() or patient == "P_00008"
    trimmed = real_exam_arrays(loaded["P_00004"])
    assert isinstance(trimmed.targets, list) and trimmed.targets[0].shape != trimmed.targets[1].shape


def test_benign_centres_land_on_the_phantom_mimic_on_the_network_grid(dataset: tuple, loaded: dict) -> None:
    _, truths, _, _ = dataset
    flipped = 0
    for patient, truth in truths.items():
        arrays = real_exam_arrays(loaded[patient])
        expected = []
        for v, _, (row, col), malignant in truth.lesions:
            if not malignant:
                view = arrays.views[v]
                flipped += view.flipped
                expected.append((v, row, view.net_shape[1] - 1 - col if view.flipped else col))
        assert len(arrays.mimics) == len(expected), patient
        for (v, row, col), (view, r, c) in zip(sorted(expected), sorted(arrays.mimics), strict=True):
            assert view == v and abs(r - row) <= 1.0 and abs(c - col) <= 1.0, patient
    assert flipped  # right breasts are flipped to put the chest wall left: the mapping must follow


def test_clinical_table_fills_the_context_and_empty_cells_stay_missing(loaded: dict) -> None:
    names = feature_names("mammo")
    arrays = {p: real_exam_arrays(loaded[p]) for p in ("P_00001", "P_00002", "P_00003", "P_00009")}
    present = {p: dict(zip(names, a.clinical_present.tolist(), strict=True)) for p, a in arrays.items()}
    assert present["P_00001"] == {"age": True, "brca_carrier": True, "family_history_breast_cancer": False,
                                  "prior_biopsy": True}
    assert present["P_00002"] == {"age": False, "brca_carrier": False, "family_history_breast_cancer": True,
                                  "prior_biopsy": False}
    assert all(present["P_00003"].values()) and not any(present["P_00009"].values())
    brca = names.index("brca_carrier")
    assert arrays["P_00001"].clinical[brca] > arrays["P_00003"].clinical[brca]
    assert [a.text_present for a in arrays.values()] == [True, False, False, False]


def _copy_tables(dataset: tuple, tmp_path: Path) -> tuple[list[dict[str, str]], list[dict[str, str]]]:
    (tmp_path / "CBIS-DDSM").symlink_to(dataset[0] / "CBIS-DDSM")
    return [dict(r) for r in dataset[2]], [dict(r) for r in dataset[3]]


def test_missing_column_is_named(dataset: tuple, tmp_path: Path) -> None:
    masses, calcs = _copy_tables(dataset, tmp_path)
    _write_tables(tmp_path, masses, calcs, [c for c in MASS_COLUMNS if c != "pathology"])
    with pytest.raises(AiEngineError, match=rf"{MASS_TABLE}: missing column\(s\) \['pathology'\]"):
        cbis_ddsm.index_exams(tmp_path)


@pytest.mark.parametrize(("column", "value", "message"), [
    ("image file path", "Calc-Training_P_09999_LEFT_CC/1.2/1.3/000000.dcm",
     rf"{CALC_TABLE} row 2: column 'image file path' names subject folder 'Calc-Training_P_09999_LEFT_CC', "
     "which is missing"),
    ("pathology", "UNKNOWN", rf"{CALC_TABLE} row 2: column 'pathology' must be one of"),
    ("breast density", "5", rf"{CALC_TABLE} row 2: column 'breast density' must be one of"),
])
def test_bad_row_is_named(dataset: tuple, tmp_path: Path, column: str, value: str, message: str) -> None:
    masses, calcs = _copy_tables(dataset, tmp_path)
    calcs[1][column] = value
    _write_tables(tmp_path, masses, calcs)
    with pytest.raises(AiEngineError, match=message):
        cbis_ddsm.index_exams(tmp_path)


def test_two_equally_large_images_in_a_subject_folder_are_ambiguous(dataset: tuple, tmp_path: Path) -> None:
    root, truths, masses, _ = dataset
    subject = masses[0]["image file path"].split("/")[0]
    shutil.copytree(root / "CBIS-DDSM" / subject, tmp_path / "CBIS-DDSM" / subject)
    shutil.copytree(root / "CBIS-DDSM" / masses[0]["ROI mask file path"].split("/")[0],
                    tmp_path / "CBIS-DDSM" / masses[0]["ROI mask file path"].split("/")[0])
    image = next((tmp_path / "CBIS-DDSM" / subject).rglob("1-1.dcm"))
    shutil.copy(image, image.with_name("1-2.dcm"))
    _write_tables(tmp_path, masses[:1], [])
    with pytest.raises(AiEngineError, match=rf"{MASS_TABLE} row 1: full mammogram of subject folder {subject} "
                                            "is ambiguous"):
        cbis_ddsm.index_exams(tmp_path)


def test_train_on_the_dataset_writes_a_bundle_that_says_so(dataset: tuple, tmp_path: Path) -> None:
    root, truths, _, _ = dataset
    bundle = train(out_dir=tmp_path / "bundle", quick=True, data_dir=root, pixel_spacing_mm=SPACING)
    metadata = json.loads((bundle / "configs" / "metadata.json").read_text())
    record = metadata["training_data"]
    assert record["source"] == "dataset" and record["path"] == str(root.resolve())
    assert (record["exams"], record["malignant_exams"]) == (16, len(CANCERS))
    assert record["views"] == sum(len(t.identities) for t in truths.values())
    assert sorted(record["tables_sha256"]) == sorted([MASS_TABLE, CALC_TABLE, "clinical.csv"])
    assert "synthetic" not in metadata["intended_use"].lower()
    assert (bundle / "models" / "model.onnx").is_file() and (bundle / "models" / "classifier.onnx").is_file()
    assert metadata["metrics"]["candidate_classifier"]["extra_exams"] == 0  # no synthetic crops in a real-data model
    with pytest.raises(AiEngineError, match="cohort_size"):
        train(out_dir=tmp_path / "other", quick=True, data_dir=root, cohort_size=20)
    with pytest.raises(AiEngineError, match="trained on a dataset directory"):
        train_density_only(bundle=bundle)  # would rebuild a synthetic cohort
    vocabulary = write_vocabulary("mammo", bundle)  # what `radfusion train mammo --data-dir` writes after training
    assert {"palpable", "lump"} <= vocabulary.terms and vocabulary.min_terms == 7  # 4 words, 3 pairs of them


@pytest.fixture(scope="module")
def test_split(dataset: tuple) -> dict[str, Truth]:
    """Patients 17-20 in the test tables of the dataset (the train tables stay as they are)."""
    return _build(dataset[0], TEST_SEEDS, "test", first=len(CANCERS + NEGATIVES) + 1)[0]


def test_a_test_table_patient_who_is_in_the_train_tables_is_not_evaluated(dataset: tuple, test_split: dict,
                                                                           tmp_path: Path) -> None:
    """CBIS-DDSM's own split puts a few patients in both: their test exams were scored by a model that had learnt
    from them."""
    masses, calcs = _copy_tables(dataset, tmp_path)
    _write_tables(tmp_path, masses, calcs)  # the train tables
    root = dataset[0]
    test_masses, test_calcs = [], []
    for name, rows in zip(cbis_ddsm.CASE_TABLES["test"], (test_masses, test_calcs), strict=True):
        with (root / name).open(newline="") as handle:
            rows.extend(csv.DictReader(handle))
    shared = test_masses[0]["patient_id"]
    for row in (*test_masses, *test_calcs):
        if row["patient_id"] == shared:
            row["patient_id"] = masses[0]["patient_id"]  # the same patient, in the train tables too
    for name, rows in zip(cbis_ddsm.CASE_TABLES["test"], (test_masses, test_calcs), strict=True):
        with (tmp_path / name).open("w", newline="") as handle:
            writer = csv.DictWriter(handle, list(rows[0]) if rows else ["patient_id"])
            writer.writeheader()
            writer.writerows(rows)
    evaluated = {e.patient_id for e in cbis_ddsm.index_exams(tmp_path, "test")}
    assert evaluated == set(test_split) - {shared} and masses[0]["patient_id"] not in evaluated


def test_the_deployed_bundle_is_evaluated_on_the_test_tables_through_the_cli(dataset: tuple, test_split: dict,
                                                                              tmp_path: Path) -> None:
    """``evaluate mammo --data-dir``: every test-table exam scored from the reader's views; the metrics name the
    dataset and the deployed bundle is left untouched."""
    from ai_engine.bundle import resolve_bundle
    from ai_engine.detectors.mammo_fusion import MammoFusion
    from ai_engine.inputs import mammography_inputs
    from ai_engine.training import cli

    root = dataset[0]
    with pytest.raises(AiEngineError, match="needs --out-dir"):
        cli.main(["evaluate", "mammo", "--data-dir", str(root)])
    (tmp_path / "train-only").mkdir()
    _write_tables(tmp_path / "train-only", *_copy_tables(dataset, tmp_path / "train-only"))
    with pytest.raises(AiEngineError, match="mass_case_description_test_set.csv"):
        cli.main(["evaluate", "mammo", "--data-dir", str(tmp_path / "train-only"), "--out-dir", str(tmp_path)])

    deployed = resolve_bundle(None, "mammo_fusion").root
    before = {p: p.read_bytes() for p in sorted(deployed.rglob("*")) if p.is_file()}
    out = tmp_path / "out"
    assert cli.main(["evaluate", "mammo", "--data-dir", str(root), "--out-dir", str(out),
                     "--pixel-spacing-mm", str(SPACING)]) == 0
    assert {p: p.read_bytes() for p in sorted(deployed.rglob("*")) if p.is_file()} == before

    written = json.loads((out / "metrics.json").read_text())
    assert written["bundle"] == {"name": "mammo_fusion", "version": resolve_bundle(None, "mammo_fusion").version,
                                 "device_uid": resolve_bundle(None, "mammo_fusion").device_uid}  # which model scored
    held_out = written["held_out"]
    assert held_out["source"] == "dataset" and held_out["path"] == str(root.resolve())
    assert (held_out["exams"], held_out["malignant_exams"]) == (4, 2)
    assert held_out["views"] == sum(len(t.identities) for t in test_split.values())
    assert sorted(held_out["tables_sha256"]) == sorted([*cbis_ddsm.CASE_TABLES["test"], "clinical.csv"])
    assert (held_out["layout"], held_out["default_pixel_spacing_mm"]) == ("CBIS-DDSM (test tables)", SPACING)
    rows = {r["exam"]: r for r in json.loads((out / "cases.json").read_text())}
    assert sorted(rows) == sorted(test_split) == ["P_00017", "P_00018", "P_00019", "P_00020"]
    for patient, truth in test_split.items():
        assert (rows[patient]["label"], rows[patient]["density_true"]) == (truth.label, truth.density)
        assert 0.0 <= rows[patient]["deep"] <= 1.0 and 0.0 <= rows[patient]["baseline"] <= 1.0
    exam = next(e for e in cbis_ddsm.load_exams(root, "test", SPACING)[1] if e.patient_id == "P_00017")
    scored = MammoFusion(deployed).detect(mammography_inputs(exam.views, exam.context)).case_score
    assert rows["P_00017"]["deep"] == pytest.approx(scored, abs=1e-6)  # the reader's views at the given spacing


def test_a_dataset_view_the_detector_refuses_leaves_its_exam_out_and_is_named(dataset: tuple, tmp_path: Path) -> None:
    """A scan that is no breast against a side edge (here: a disc in the middle) is left out, not a crash."""
    root, truths, _, _ = dataset
    copy = tmp_path / "cbis"
    shutil.copytree(root, copy)
    path = copy / next(iter(next(iter(truths.values())).full.values())).relative_to(root)
    ds = pydicom.dcmread(path)
    rows, cols = np.indices(ds.pixel_array.shape)
    disc = np.hypot(rows - rows.mean(), cols - cols.mean()) < min(rows.shape) / 3
    ds.PixelData = np.where(disc, 3000, 100).astype(ds.pixel_array.dtype).tobytes()
    ds.save_as(path)
    with pytest.raises(AiEngineError, match=r"hold 15 readable patients \(1 refused\)"):  # before: a crash
        train(out_dir=tmp_path / "bundle", quick=True, data_dir=copy, pixel_spacing_mm=SPACING)  # 16 - 1 < 16
