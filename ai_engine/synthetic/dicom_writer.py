"""Write synthetic phantom images as real DICOM: CT Image Storage and Digital Mammography.

The objects carry every module their IOD requires (checked with dciodvfy in the tests), so
the rest of radfusion treats them exactly like images from a modality.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.sequence import Sequence
from pydicom.uid import ExplicitVRLittleEndian, generate_uid

from ai_engine.errors import SyntheticError

CT_IMAGE_STORAGE = "1.2.840.10008.5.1.4.1.1.2"
MAMMO_FOR_PRESENTATION = "1.2.840.10008.5.1.4.1.1.1.2"
SERIES_DESCRIPTION_TAG = "SYNTHETIC PHANTOM"
MANUFACTURER = "radfusion synthetic phantom"

# SNOMED CT view codes (SCT) as used in the View Code Sequence of mammograms.
VIEW_CODES: dict[str, tuple[str, str]] = {
    "CC": ("399162004", "cranio-caudal"),
    "MLO": ("399368009", "medio-lateral oblique"),
}
# Patient Orientation (row direction, column direction) by laterality and view.
MAMMO_ORIENTATION: dict[tuple[str, str], tuple[str, str]] = {
    ("L", "CC"): ("A", "R"),
    ("R", "CC"): ("P", "L"),
    ("L", "MLO"): ("A", "FR"),
    ("R", "MLO"): ("P", "FL"),
}



@dataclass(frozen=True)
class StudyHeader:
    """Patient and study identity shared by every series of one synthetic study."""

    patient_id: str
    patient_name: str
    accession_number: str
    study_instance_uid: str
    study_date: str
    study_time: str
    patient_birth_date: str
    patient_sex: str


def _base_dataset(header: StudyHeader, sop_class_uid: str, modality: str, series_uid: str,
                  series_number: int, instance_number: int, description: str) -> Dataset:
    """Patient, General Study, General Series, General Equipment and SOP Common modules."""
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    sop_uid = generate_uid()
    ds.file_meta.MediaStorageSOPClassUID = sop_class_uid
    ds.file_meta.MediaStorageSOPInstanceUID = sop_uid
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.SpecificCharacterSet = "ISO_IR 100"
    ds.SOPClassUID = sop_class_uid
    ds.SOPInstanceUID = sop_uid
    ds.InstanceCreationDate = header.study_date
    ds.InstanceCreationTime = header.study_time
    ds.PatientName = header.patient_name
    ds.PatientID = header.patient_id
    ds.IssuerOfPatientID = "RADFUSION-SYNTHETIC"
    ds.PatientBirthDate = header.patient_birth_date
    ds.PatientSex = header.patient_sex
    ds.StudyInstanceUID = header.study_instance_uid
    ds.StudyDate = header.study_date
    ds.StudyTime = header.study_time
    ds.ContentDate = header.study_date
    ds.ContentTime = header.study_time
    ds.SeriesDate = header.study_date
    ds.SeriesTime = header.study_time
    ds.AcquisitionDate = header.study_date
    ds.AcquisitionTime = header.study_time
    ds.ReferringPhysicianName = "SYNTHETIC^REFERRER"
    ds.StudyID = header.accession_number[-16:]
    ds.AccessionNumber = header.accession_number
    ds.StudyDescription = f"{SERIES_DESCRIPTION_TAG} STUDY"
    ds.Modality = modality
    ds.SeriesInstanceUID = series_uid
    ds.SeriesNumber = series_number
    ds.SeriesDescription = f"{SERIES_DESCRIPTION_TAG} {description}"
    ds.InstanceNumber = instance_number
    ds.Manufacturer = MANUFACTURER
    ds.ManufacturerModelName = "radfusion.ai_engine.synthetic"
    ds.SoftwareVersions = "1"
    ds.InstitutionName = "SYNTHETIC"
    ds.StationName = "PHANTOM"
    return ds


def _set_pixels(ds: Dataset, stored: np.ndarray, bits_stored: int) -> None:
    """Image Pixel module for one grey-scale frame; the signedness follows the array dtype."""
    if stored.dtype not in (np.int16, np.uint16):
        raise SyntheticError(f"pixel array dtype must be int16 or uint16, got {stored.dtype}")
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.Rows, ds.Columns = (int(n) for n in stored.shape)
    ds.BitsAllocated = 16
    ds.BitsStored = bits_stored
    ds.HighBit = bits_stored - 1
    ds.PixelRepresentation = 1 if stored.dtype == np.int16 else 0
    ds.PixelData = np.ascontiguousarray(stored).tobytes()


def write_ct_series(hu: np.ndarray, spacing_mm: tuple[float, float, float], out_dir: Path,
                    header: StudyHeader, *, frame_of_reference_uid: str, body_part: str,
                    description: str, series_number: int = 1, signed: bool = True) -> tuple[list[Path], str]:
    """Write an axial (z, y, x) HU volume as one CT series, one file per slice.

    ``signed`` stores int16 with intercept 0, otherwise uint16 with intercept -1024, so both
    Pixel Representations occur in the synthetic data. Returns the paths and Series UID.
    """
    if hu.ndim != 3:
        raise SyntheticError(f"CT volume must be 3-D (z, y, x), got shape {hu.shape}")
    intercept = 0.0 if signed else -1024.0
    low, high = (-32768, 32767) if signed else (0, 65535)
    stored_all = np.clip(np.rint(hu - intercept), low, high).astype(np.int16 if signed else np.uint16)
    series_uid = generate_uid()
    dz, dy, dx = spacing_mm
    n_slices, rows, cols = hu.shape
    origin_x = -dx * (cols - 1) / 2.0
    origin_y = -dy * (rows - 1) / 2.0
    out_dir.mkdir(parents=True, exist_ok=True)
    paths: list[Path] = []
    for k in range(n_slices):
        ds = _base_dataset(header, CT_IMAGE_STORAGE, "CT", series_uid, series_number, k + 1, description)
        ds.FrameOfReferenceUID = frame_of_reference_uid
        ds.PositionReferenceIndicator = ""
        ds.BodyPartExamined = body_part  # present, so dciodvfy needs no (Type 2C) Laterality
        ds.PatientPosition = "HFS"
        ds.ImageType = ["ORIGINAL", "PRIMARY", "AXIAL"]
        ds.AcquisitionNumber = 1
        ds.KVP = 120
        ds.SliceThickness = dz
        ds.SpacingBetweenSlices = dz
        ds.PixelSpacing = [dy, dx]
        ds.ImageOrientationPatient = [1, 0, 0, 0, 1, 0]
        # Slices step toward the head (+z in LPS), starting at the feet end.
        ds.ImagePositionPatient = [origin_x, origin_y, -dz * (n_slices - 1) / 2.0 + dz * k]
        ds.SliceLocation = float(ds.ImagePositionPatient[2])
        ds.RescaleIntercept = intercept
        ds.RescaleSlope = 1
        ds.RescaleType = "HU"
        ds.WindowCenter = 40 if body_part == "HEAD" else -600
        ds.WindowWidth = 80 if body_part == "HEAD" else 1500
        _set_pixels(ds, stored_all[k], bits_stored=16)
        path = out_dir / f"{series_uid}.{k + 1:04d}.dcm"
        ds.save_as(path, enforce_file_format=True)
        paths.append(path)
    return paths, series_uid


def _code(value: str, scheme: str, meaning: str) -> Dataset:
    item = Dataset()
    item.CodeValue = value
    item.CodingSchemeDesignator = scheme
    item.CodeMeaning = meaning
    return item


def write_mammo_view(image: np.ndarray, pixel_spacing_mm: float, out_dir: Path, header: StudyHeader,
                     *, laterality: str, view: str, series_uid: str, instance_number: int,
                     bits_stored: int = 12) -> Path:
    """Write one For Presentation digital mammogram (MONOCHROME2, unsigned) and return its path."""
    if (laterality, view) not in MAMMO_ORIENTATION:
        raise SyntheticError(
            f"mammogram laterality/view must be one of {sorted(MAMMO_ORIENTATION)}, got {(laterality, view)}")
    if image.ndim != 2:
        raise SyntheticError(f"mammogram must be 2-D (rows, columns), got shape {image.shape}")
    stored = np.clip(np.rint(image), 0, 2**bits_stored - 1).astype(np.uint16)
    ds = _base_dataset(header, MAMMO_FOR_PRESENTATION, "MG", series_uid, 1, instance_number,
                       "MAMMOGRAPHY")
    ds.BodyPartExamined = "BREAST"
    ds.ImageType = ["ORIGINAL", "PRIMARY"]
    ds.PresentationIntentType = "FOR PRESENTATION"
    ds.ImageLaterality = laterality  # series Laterality must then be absent (Type 2C)
    ds.ViewPosition = view
    ds.PatientOrientation = list(MAMMO_ORIENTATION[(laterality, view)])
    ds.BurnedInAnnotation = "NO"
    ds.LossyImageCompression = "00"
    ds.PixelIntensityRelationship = "LOG"
    ds.PixelIntensityRelationshipSign = 1
    ds.RescaleIntercept = 0
    ds.RescaleSlope = 1
    ds.RescaleType = "US"
    ds.PresentationLUTShape = "IDENTITY"
    ds.WindowCenter = 2 ** (bits_stored - 1)
    ds.WindowWidth = 2**bits_stored
    ds.PixelSpacing = [pixel_spacing_mm, pixel_spacing_mm]
    ds.ImagerPixelSpacing = [pixel_spacing_mm, pixel_spacing_mm]
    ds.DistanceSourceToDetector = 660
    ds.DistanceSourceToPatient = 640
    ds.EstimatedRadiographicMagnificationFactor = round(660 / 640, 5)
    ds.PositionerType = "MAMMOGRAPHIC"
    ds.PositionerPrimaryAngle = 0 if view == "CC" else 45
    ds.DetectorType = "DIRECT"
    ds.BreastImplantPresent = "NO"
    ds.OrganExposed = "BREAST"
    ds.KVP = 28
    ds.ExposureTime = 1000
    ds.XRayTubeCurrent = 100
    ds.AcquisitionDeviceProcessingDescription = "SYNTHETIC"
    ds.QualityControlImage = "NO"
    ds.AnatomicRegionSequence = Sequence([_code("76752008", "SCT", "Breast")])
    ds.AcquisitionContextSequence = Sequence()
    code_value, meaning = VIEW_CODES[view]
    view_item = _code(code_value, "SCT", meaning)
    view_item.ViewModifierCodeSequence = Sequence()
    ds.ViewCodeSequence = Sequence([view_item])
    _set_pixels(ds, stored, bits_stored=bits_stored)
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / f"{series_uid}.{instance_number:04d}.dcm"
    ds.save_as(path, enforce_file_format=True)
    return path
