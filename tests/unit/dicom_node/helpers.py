"""Test helpers for dicom_node: a recording sink and small synthetic CT files."""

from __future__ import annotations

import threading
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian, generate_uid

from dicom_node.contracts import AssociationInfo, StoredInstance


@dataclass
class RecordingSink:
    """A StoreSink that remembers every call (optionally failing instance_stored)."""

    fail_store: bool = False
    opened: list[AssociationInfo] = field(default_factory=list)
    stored: list[StoredInstance] = field(default_factory=list)
    rejected: list[tuple[str, str, Path | None, str | None]] = field(default_factory=list)
    closed: list[tuple[str, bool]] = field(default_factory=list)
    refused: list[tuple[str, str, str, str]] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def association_opened(self, info: AssociationInfo) -> None:
        with self.lock:
            self.opened.append(info)

    def instance_stored(self, instance: StoredInstance) -> bool:
        if self.fail_store:
            raise RuntimeError("database is locked")
        with self.lock:
            is_new = all(s.sop_instance_uid != instance.sop_instance_uid for s in self.stored)
            self.stored.append(instance)
        return is_new

    def instance_rejected(self, association_id: str, reason: str, quarantine_path: Path | None,
                          sop_instance_uid: str | None) -> None:
        with self.lock:
            self.rejected.append((association_id, reason, quarantine_path, sop_instance_uid))

    def association_closed(self, association_id: str, released: bool) -> None:
        with self.lock:
            self.closed.append((association_id, released))

    def association_rejected(self, calling_ae: str, called_ae: str, peer: str, reason: str) -> None:
        with self.lock:
            self.refused.append((calling_ae, called_ae, peer, reason))


def ct_dataset(study_uid: str | None = None, series_uid: str | None = None, index: int = 1,
               size: int = 64) -> Dataset:
    """A small valid CT slice (explicit VR little endian) with the attributes routing looks at."""
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.file_meta.MediaStorageSOPClassUID = CTImageStorage
    ds.SOPClassUID = CTImageStorage
    ds.SOPInstanceUID = generate_uid()
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    ds.StudyInstanceUID = study_uid or generate_uid()
    ds.SeriesInstanceUID = series_uid or generate_uid()
    ds.PatientName = "Test^Patient"
    ds.PatientID = "P123"
    ds.AccessionNumber = "ACC1"
    ds.StudyDate = "20240101"
    ds.StudyTime = "120000"
    ds.Modality = "CT"
    ds.BodyPartExamined = "HEAD"
    ds.SeriesDescription = "Head 5mm"
    ds.SeriesNumber = 2
    ds.InstanceNumber = index
    ds.ImageType = ["ORIGINAL", "PRIMARY", "AXIAL"]
    ds.SliceThickness = "5"
    ds.ImagePositionPatient = [0, 0, 5.0 * index]
    ds.ImageOrientationPatient = [1, 0, 0, 0, 1, 0]
    ds.PixelSpacing = [0.5, 0.5]
    ds.Rows = ds.Columns = size
    ds.BitsAllocated = 16
    ds.BitsStored = 12
    ds.HighBit = 11
    ds.PixelRepresentation = 0
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.RescaleIntercept = "-1024"
    ds.RescaleSlope = "1"
    rng = np.random.default_rng(index)
    ds.PixelData = rng.integers(0, 4095, size=(size, size), dtype=np.uint16).tobytes()
    return ds


def write_ct(directory: Path, name: str, **kwargs: object) -> tuple[Path, Dataset]:
    """Write a CT slice as a Part 10 file; return its path and dataset."""
    ds = ct_dataset(**kwargs)  # type: ignore[arg-type]
    path = directory / name
    ds.save_as(path, enforce_file_format=True)
    return path, ds
