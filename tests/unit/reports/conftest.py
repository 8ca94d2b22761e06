"""Source studies for the report writers, made by the project's phantom generator."""

from __future__ import annotations

from pathlib import Path

import pydicom
import pytest

from ai_engine.results import AlgorithmInfo
from ai_engine.synthetic.studies import write_study

ALGORITHM_DEVICE_UID = "1.2.826.0.1.3680043.8.498.424242"


def read_sources(kind: str, out_dir: Path, **options: int) -> list[pydicom.Dataset]:
    """A synthetic study read back; CT slices ordered by position along the slice normal."""
    study = write_study(kind, out_dir, seed=7, **options)
    datasets = [pydicom.dcmread(path) for path in study.paths]
    if kind == "mammo":
        return sorted(datasets, key=lambda ds: int(ds.InstanceNumber))
    return sorted(datasets, key=lambda ds: float(ds.ImagePositionPatient[2]))


@pytest.fixture(scope="session")
def head_ct(tmp_path_factory: pytest.TempPathFactory) -> list[pydicom.Dataset]:
    """A 12-slice 128x128 head CT."""
    return read_sources("head_ct", tmp_path_factory.mktemp("head_ct"), rows=128, slices=12)


@pytest.fixture(scope="session")
def chest_ct(tmp_path_factory: pytest.TempPathFactory) -> list[pydicom.Dataset]:
    """A 12-slice 128x128 chest CT."""
    return read_sources("chest_ct", tmp_path_factory.mktemp("chest_ct"), rows=128, slices=12)


@pytest.fixture(scope="session")
def mammo_views(tmp_path_factory: pytest.TempPathFactory) -> list[pydicom.Dataset]:
    """The two views (CC, MLO) of one breast, 128 rows high."""
    return read_sources("mammo", tmp_path_factory.mktemp("mammo"), rows=128)


@pytest.fixture()
def algorithm() -> AlgorithmInfo:
    """A classical-baseline algorithm identity."""
    return AlgorithmInfo(name="ich-baseline", version="0.3.1", device_uid=ALGORITHM_DEVICE_UID,
                         kind="classical baseline")

