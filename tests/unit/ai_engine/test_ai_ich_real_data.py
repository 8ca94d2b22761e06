"""ICH training on a dataset directory (docs/model-cards/ich.md, "Training on real data").

The dataset is built in the documented layout from small synthetic heads written as DICOM: the
reader must give back the same voxels, bleed labels and clinical values, refuse malformed
datasets naming the fault, and the bundle it trains must say where it came from.
"""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pydicom
import pytest

from ai_engine.bundle import DATASET_KIND, resolve_bundle
from ai_engine.clinical_features import encode_clinical, encode_note, feature_names
from ai_engine.errors import AiEngineError
from ai_engine.results import Task
from ai_engine.synthetic.cohorts.ich import IchCase, write_case_dicom
from ai_engine.synthetic.head_ct import HeadAcquisition, HemorrhageSpec, make_head_case
from ai_engine.training.datasets import ich_cases
from ai_engine.training.note_vocabulary import write_vocabulary
from ai_engine.volume import load_series

TINY = HeadAcquisition(rows=96, slice_mm=5.0, coverage_mm=60.0)
COLUMNS = ("case_id", "label", "age", "sex", "inr", "platelets", "anticoagulant", "antiplatelet",
           "trauma_mechanism", "note")


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _write_case(root: Path, case_id: str, seed: int, bleed: bool) -> np.ndarray:
    """Write one head as root/<case_id>/dicom/*.dcm and its mask; returns the labels in load_series order."""
    bleeds = [HemorrhageSpec("intraparenchymal", 12.0, 70.0, 1.0)] if bleed else []
    head = make_head_case(np.random.default_rng(seed), TINY, bleeds)
    case = IchCase(case_id, head.hu, head.labels, head.spacing, head.truths, None, None, int(bleed), 70.0, "F")
    paths = write_case_dicom(case, root / case_id / "dicom")
    volume = load_series(paths)
    np.testing.assert_allclose(volume.array, head.hu, atol=1.0)  # the writer's grid is the reader's grid
    return head.labels


def _write_table(root: Path, rows: list[dict[str, str]]) -> None:
    with (root / "cases.csv").open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=COLUMNS)
        writer.writeheader()
        writer.writerows(rows)


@pytest.fixture(scope="module")
def dataset(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Twenty heads, ten with a bleed (the stratified splits need about ten of each); case c1's mask is stored in reversed slice order with its SOP UIDs."""
    root = tmp_path_factory.mktemp("ich-dataset")
    rows = []
    for i in range(20):
        case_id, bleed = f"c{i}", i % 2 == 1
        labels = _write_case(root, case_id, seed=100 + i, bleed=bleed)
        if case_id == "c1":
            uids = load_series(sorted((root / case_id / "dicom").glob("*.dcm"))).sop_instance_uids
            np.savez(root / case_id / "mask.npz", labels=labels[::-1], sop_instance_uids=np.array(uids[::-1]))
        elif case_id != "c7":  # c7: no mask, trains the case-level head only
            np.savez(root / case_id / "mask.npz", labels=labels)
        rows.append({"case_id": case_id, "label": str(int(bleed)), "age": str(60 + i), "sex": "F" if i % 3 else "M",
                     "inr": "2.8" if bleed else "1.0", "platelets": "" if i == 2 else "210",
                     "anticoagulant": "1" if bleed else ("" if i == 2 else "0"), "antiplatelet": "",
                     "trauma_mechanism": "fall" if i == 3 else "", "note": "found on floor" if i == 3 else ""})
    _write_table(root, rows)
    return root


def test_cases_come_back_with_their_voxels_masks_and_clinical_values(dataset: Path) -> None:
    cases = {case.case_id: case for case in ich_cases.load_cases(dataset, ich_cases.read_table(dataset))}
    assert sorted(cases) == sorted(f"c{i}" for i in range(20))
    expected = load_series(sorted((dataset / "c1" / "dicom").glob("*.dcm")))
    np.testing.assert_array_equal(cases["c1"].hu, expected.array)
    # the reversed mask is put back in series order: the bleed lies where the phantom put it
    regenerated = make_head_case(np.random.default_rng(101), TINY, [HemorrhageSpec("intraparenchymal", 12.0, 70.0,
                                                                                      1.0)])
    np.testing.assert_array_equal(cases["c1"].labels, regenerated.labels)
    assert [t.subtype for t in cases["c1"].truths] == ["intraparenchymal"]
    assert cases["c1"].truths[0].size == pytest.approx(regenerated.truths[0].size, rel=1e-6)
    assert (cases["c7"].labels == ich_cases.UNKNOWN_LABEL).all() and cases["c7"].truths == []
    assert not cases["c0"].labels.any() and cases["c0"].label == 0

    names = feature_names(Task.ICH)
    values, present = encode_clinical(Task.ICH, cases["c3"].context)
    known = dict(zip(names, present, strict=True))
    assert known["inr"] and known["platelets"] and known["anticoagulant"] and known["trauma"]
    assert values[names.index("trauma")] == 1.0 and values[names.index("anticoagulant")] == 1.0
    assert not known["gcs"] and not known["systolic_bp"]  # empty columns are missing, not zero
    _, present2 = encode_clinical(Task.ICH, cases["c2"].context)
    known2 = dict(zip(names, present2, strict=True))
    assert not known2["platelets"] and not known2["anticoagulant"] and not known2["antiplatelet"]


def test_training_on_the_dataset_writes_a_bundle_that_names_it(dataset: Path, tmp_path: Path) -> None:
    from ai_engine.training.tasks import ich

    root = ich.train(out_dir=tmp_path / "bundle", epochs=None, cohort_size=None, seed=0, quick=True,
                     data_dir=dataset)
    metadata = json.loads((root / "configs" / "metadata.json").read_text())
    recorded = metadata["training_data"]
    assert recorded["source"] == "dataset" and recorded["path"] == str(dataset.resolve())
    assert (recorded["cases"], recorded["positives"], recorded["with_masks"]) == (20, 10, 19)
    assert len(recorded["tables_sha256"]["cases.csv"]) == 64
    assert "synthetic" not in metadata["intended_use"] and str(dataset.resolve()) in metadata["intended_use"]
    assert metadata["metrics"]["held_out"].startswith("not evaluated by radfusion")  # was the card's metrics
    assert (root / "models" / "model.onnx").is_file() and (root / "models" / "fusion.onnx").is_file()
    assert resolve_bundle(root, "ich_fusion").algorithm().kind == DATASET_KIND  # what the SR says of it
    with pytest.raises(AiEngineError, match="trained on a dataset directory"):
        ich.train_fusion_only(bundle=root, quick=True)
    vocabulary = write_vocabulary("ich", root)  # what `radfusion train ich --data-dir` writes after training
    assert {"found", "floor"} <= vocabulary.terms  # the one note of the dataset (before: no vocabulary at all)
    assert resolve_bundle(root, "ich_fusion").note_vocabulary == vocabulary
    assert encode_note("dizziness", encoding="hashed-terms", vocabulary=vocabulary)[1] is False


def test_every_dataset_case_goes_to_the_training_splits(dataset: Path, tmp_path: Path) -> None:
    """A dataset is split whole; no case is set aside for the fusion heads only (that is for the synthetic cohort's
    further patients), and a synthetic cohort size is refused rather than ignored."""
    from ai_engine.training.tasks import ich

    with pytest.raises(AiEngineError, match="cohort_size sizes the synthetic cohort"):
        ich.train(out_dir=tmp_path / "other", epochs=None, cohort_size=12, seed=0, quick=True, data_dir=dataset)
    root = ich.train(out_dir=tmp_path / "bundle", epochs=None, cohort_size=None, seed=0, quick=True, data_dir=dataset)
    splits = json.loads((root / "configs" / "metadata.json").read_text())["training_data"]["splits"]
    assert sum(splits[name] for name in ich.SPLITS) == 20
    assert splits[ich.FUSION_EXTRA_SPLIT] == 0


def _copy_of(dataset: Path, tmp_path: Path) -> Path:
    import shutil

    return Path(shutil.copytree(dataset, tmp_path / "copy"))


def _rewrite_row(root: Path, which: str, **cells: str) -> None:
    with (root / "cases.csv").open(newline="") as handle:
        rows = list(csv.DictReader(handle))
    for row in rows:
        if row["case_id"] == which:
            row.update(cells)
    _write_table(root, rows)


@pytest.mark.parametrize(("damage", "message"), [
    ("no_table", r"cases\.csv is missing"),
    ("no_label_column", r"lacks column\(s\) \['label'\]"),
    ("label_2", r"line 4: label must be 0 or 1, got '2'"),
    ("escaping_id", r"line 2: case_id '\.\./c0'"),
    ("duplicate_id", r"line 3: case_id c0 repeats line 2"),
    ("bad_trauma", r"line 5: trauma_mechanism must be one of"),
    ("inr_text", r"line 3: column 'inr' is not a number: 'high'"),
    ("extra_cell", r"line 3: more cells than the header's 10"),
    ("no_series", r"case c5: no DICOM files"),
    ("mask_shape", r"c4/mask\.npz: labels have shape"),
    ("clean_label_with_blood", r"case c3 has label 0 but its mask marks blood"),
    ("missing_slice", r"real ICH dataset: case c6 \(.*c6/dicom\): slice spacing must be regular"),  # named no case
    ("latin1_table", r"cases\.csv is not UTF-8 text .*save it as CSV UTF-8"),  # a bare UnicodeDecodeError
    ("bad_sex", r"line 4: column 'sex' must be M, F, male, female or empty, got 'W'"),  # read as missing
])
def test_a_malformed_dataset_is_refused_naming_the_fault(dataset: Path, tmp_path: Path, damage: str,
                                                         message: str) -> None:
    root = _copy_of(dataset, tmp_path)
    if damage == "no_table":
        (root / "cases.csv").unlink()
    elif damage == "no_label_column":
        text = (root / "cases.csv").read_text().replace("case_id,label,", "case_id,diagnosis,", 1)
        (root / "cases.csv").write_text(text)
    elif damage == "label_2":
        _rewrite_row(root, "c2", label="2")
    elif damage == "escaping_id":
        _rewrite_row(root, "c0", case_id="../c0")
    elif damage == "duplicate_id":
        _rewrite_row(root, "c1", case_id="c0")
    elif damage == "bad_trauma":
        _rewrite_row(root, "c3", trauma_mechanism="skiing")
    elif damage == "inr_text":
        _rewrite_row(root, "c1", inr="high")
    elif damage == "extra_cell":
        lines = (root / "cases.csv").read_text().splitlines()
        (root / "cases.csv").write_text("\n".join([*lines[:2], lines[2] + ",surplus", *lines[3:]]) + "\n")
    elif damage == "no_series":
        for path in (root / "c5" / "dicom").glob("*.dcm"):
            path.unlink()
    elif damage == "mask_shape":
        labels = np.load(root / "c4" / "mask.npz")["labels"]
        np.savez(root / "c4" / "mask.npz", labels=labels[1:])
    elif damage == "clean_label_with_blood":
        _rewrite_row(root, "c3", label="0")
    elif damage == "missing_slice":
        (root / "c6" / "mask.npz").unlink()
        files = sorted((root / "c6" / "dicom").glob("*.dcm"),
                       key=lambda f: float(pydicom.dcmread(f).ImagePositionPatient[2]))
        files[len(files) // 2].unlink()
    elif damage == "bad_sex":
        _rewrite_row(root, "c2", sex="W")
    elif damage == "latin1_table":
        _rewrite_row(root, "c3", note="bewusstseinsgetrübt")
        (root / "cases.csv").write_bytes((root / "cases.csv").read_text().encode("latin-1"))
    with pytest.raises(AiEngineError, match=message):
        list(ich_cases.load_cases(root, ich_cases.read_table(root)))


def test_an_excel_table_and_upper_case_file_names_are_read(dataset: Path, tmp_path: Path) -> None:
    """Excel's "CSV UTF-8" starts with a byte-order mark (it was refused: no column 'case_id'), and some exports
    name their files .DCM (those slices were silently left out of the volume)."""
    root = _copy_of(dataset, tmp_path)
    (root / "cases.csv").write_bytes(b"\xef\xbb\xbf" + (root / "cases.csv").read_bytes())
    for path in (root / "c4" / "dicom").glob("*.dcm"):
        path.rename(path.with_suffix(".DCM"))
    cases = {case.case_id: case for case in ich_cases.load_cases(root, ich_cases.read_table(root))}
    assert cases["c4"].hu.shape == next(c for c in ich_cases.load_cases(dataset, ich_cases.read_table(dataset))
                                        if c.case_id == "c4").hu.shape


def test_the_deployed_bundle_is_evaluated_on_the_dataset_through_the_cli(dataset: Path, tmp_path: Path) -> None:
    """``evaluate ich --data-dir``: every case through the server's loader; metrics name the dataset."""
    from ai_engine.training import cli

    with pytest.raises(AiEngineError, match="needs --out-dir"):
        cli.evaluate("ich", data_dir=dataset)
    assert cli.main(["evaluate", "ich", "--data-dir", str(dataset), "--out-dir", str(tmp_path)]) == 0
    result = json.loads((tmp_path / "metrics.json").read_text())
    assert result["held_out"]["source"] == "dataset" and result["held_out"]["path"] == str(dataset.resolve())
    assert (result["held_out"]["cases"], result["held_out"]["positives"]) == (20, 10)
    rows = {r["case"]: r for r in json.loads((tmp_path / "cases.json").read_text())}
    assert rows["c1"]["truth_ml"] == pytest.approx(12.0, rel=0.3) and rows["c7"]["truth_ml"] == 0.0
    assert 0.0 <= result["deep_fusion"]["auc"] <= 1.0 and (tmp_path / "roc.png").is_file()
