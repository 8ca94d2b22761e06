"""Reader of 3-D MetaImage files (``.mhd`` header + ``.raw``/``.zraw`` data, or one ``.mha``), as LUNA16 ships them.

SimpleITK is not a dependency: this reads the subset of the MetaIO format a CT volume needs
(one channel, three dimensions, raw or zlib-compressed data) and refuses the rest with the
file and the key at fault. The result is a ``Volume`` in ``load_series``'s convention:

- the array is (z, y, x); MetaImage stores x fastest, so the data reshape to (DimSize[2], [1], [0]);
- ``TransformMatrix`` holds the direction of the x, y and z index axes in world (LPS) space, three
  values each, as ITK reads it: these are ``Volume.direction``'s rows, and ``Offset`` is the world
  position of voxel (0, 0, 0);
- ``load_series`` orders slices along row x column, so a file whose z axis runs the other way is
  flipped along z (origin moved to the last slice); a z axis not along that normal (sheared or
  tilted stacks) is refused: LUNA16 stores none, and DICOM series with a gantry tilt are read
  by ``load_series``.

MetaImage has no rescale: the stored values are taken as Hounsfield units (LUNA16 stores HU as
MET_SHORT). ``AnatomicalOrientation`` and ``CenterOfRotation`` are informational and ignored, as
ITK ignores them when reading.
"""

from __future__ import annotations

import zlib
from pathlib import Path

import numpy as np

from ai_engine.errors import AiEngineError
from ai_engine.volume import ORIENTATION_TOLERANCE, Volume

ELEMENT_TYPES: dict[str, str] = {"MET_UCHAR": "u1", "MET_CHAR": "i1", "MET_SHORT": "i2", "MET_USHORT": "u2",
                                 "MET_INT": "i4", "MET_UINT": "u4", "MET_FLOAT": "f4", "MET_DOUBLE": "f8"}
SPACING_KEYS = ("ElementSpacing", "ElementSize")
OFFSET_KEYS = ("Offset", "Position", "Origin")
DIRECTION_KEYS = ("TransformMatrix", "Orientation", "Rotation")
BYTE_ORDER_KEYS = ("ElementByteOrderMSB", "BinaryDataByteOrderMSB")
DATA_FILE_KEY = "ElementDataFile"  # the last key of a header: the data follow it (LOCAL) or live in that file


def _fail(path: Path, key: str, message: str) -> AiEngineError:
    return AiEngineError(f"MetaImage {path}: {key}: {message}")


def read_header(path: Path) -> tuple[dict[str, str], int]:
    """The header's ``key = value`` pairs, and the byte offset where the header ends (where LOCAL data begin)."""
    raw = Path(path).read_bytes()
    header: dict[str, str] = {}
    position = 0
    while DATA_FILE_KEY not in header:
        end = raw.find(b"\n", position)
        if end < 0:
            end = len(raw)
        if position >= len(raw):
            raise _fail(path, DATA_FILE_KEY, "missing; the header must end with it")
        line = raw[position:end].decode("latin-1").strip()
        position = end + 1
        if not line:
            continue
        key, sep, value = line.partition("=")
        if not sep:
            raise _fail(path, key.strip() or "header", f"line {line[:60]!r} is not 'key = value'")
        header[key.strip()] = value.strip()
    return header, min(position, len(raw))


def _first(header: dict[str, str], keys: tuple[str, ...]) -> tuple[str, str] | None:
    for key in keys:
        if key in header:
            return key, header[key]
    return None


def _numbers(path: Path, key: str, value: str, count: int) -> np.ndarray:
    try:
        numbers = np.array([float(v) for v in value.split()], dtype=np.float64)
    except ValueError:
        raise _fail(path, key, f"expected {count} numbers, got {value!r}") from None
    if len(numbers) != count or not np.all(np.isfinite(numbers)):
        raise _fail(path, key, f"expected {count} finite numbers, got {value!r}")
    return numbers


def _flag(path: Path, key: str, value: str) -> bool:
    if value.lower() not in ("true", "false"):
        raise _fail(path, key, f"expected True or False, got {value!r}")
    return value.lower() == "true"


def _geometry(path: Path, header: dict[str, str]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(spacing x y z, offset x y z, direction rows = x, y, z index axes) of the header, checked."""
    spacing_entry = _first(header, SPACING_KEYS)
    if spacing_entry is None:
        raise _fail(path, SPACING_KEYS[0], "missing; a training volume needs its voxel size")
    spacing = _numbers(path, *spacing_entry, 3)
    if np.any(spacing <= 0):
        raise _fail(path, spacing_entry[0], f"spacings must be positive, got {spacing_entry[1]!r}")
    offset_entry = _first(header, OFFSET_KEYS)
    offset = _numbers(path, *offset_entry, 3) if offset_entry else np.zeros(3)
    direction_entry = _first(header, DIRECTION_KEYS)
    direction = _numbers(path, *direction_entry, 9).reshape(3, 3) if direction_entry else np.eye(3)
    if np.max(np.abs(direction @ direction.T - np.eye(3))) > 1e-3:
        raise _fail(path, direction_entry[0] if direction_entry else DIRECTION_KEYS[0],
                    "the three axis directions must be orthonormal")
    return spacing, offset, direction


def _data_bytes(path: Path, header: dict[str, str], header_end: int, expected: int) -> bytes:
    """The voxel bytes (decompressed), exactly ``expected`` of them."""
    name = header[DATA_FILE_KEY]
    if name == "LOCAL":
        source, start = path, header_end
    elif name.upper() == "LIST" or "%" in name or len(name.split()) > 1:
        raise _fail(path, DATA_FILE_KEY, f"{name!r}: one data file per volume is supported (not LIST or patterns)")
    else:
        source, start = path.parent / name, 0
        if not source.is_file():
            raise _fail(path, DATA_FILE_KEY, f"data file {source} does not exist")
    data = source.read_bytes()[start:]
    if _flag(path, "CompressedData", header.get("CompressedData", "False")):
        try:
            data = zlib.decompress(data)
        except zlib.error as error:
            raise _fail(path, "CompressedData", f"{source} is not zlib data ({error})") from None
    else:
        header_size = int(_numbers(path, "HeaderSize", header.get("HeaderSize", "0"), 1)[0])
        if header_size == -1:  # MetaIO: the data are the last bytes of the file
            data = data[max(len(data) - expected, 0):]
        elif header_size >= 0:
            data = data[header_size:]
        else:
            raise _fail(path, "HeaderSize", f"must be -1 or a byte count, got {header_size}")
    if len(data) != expected:
        raise _fail(path, "DimSize", f"{source} holds {len(data)} bytes of voxel data, DimSize x ElementType "
                                     f"needs {expected}")
    return data


def read_metaimage(path: Path | str) -> Volume:
    """The volume of a 3-D MetaImage header (``.mhd`` or ``.mha``) in ``load_series``'s convention (module doc)."""
    path = Path(path)
    if not path.is_file():
        raise AiEngineError(f"MetaImage {path}: file does not exist")
    header, header_end = read_header(path)
    if header.get("ObjectType", "Image") != "Image":
        raise _fail(path, "ObjectType", f"must be Image, got {header['ObjectType']!r}")
    if header.get("NDims") != "3":
        raise _fail(path, "NDims", f"must be 3 (one CT volume), got {header.get('NDims')!r}")
    if header.get("ElementNumberOfChannels", "1") != "1":
        raise _fail(path, "ElementNumberOfChannels", f"must be 1, got {header['ElementNumberOfChannels']!r}")
    if "DimSize" not in header:
        raise _fail(path, "DimSize", "missing")
    dims = _numbers(path, "DimSize", header["DimSize"], 3)
    if np.any(dims < 1) or np.any(dims != np.round(dims)):
        raise _fail(path, "DimSize", f"must be three positive integers, got {header['DimSize']!r}")
    element = header.get("ElementType", "")
    if element not in ELEMENT_TYPES:
        raise _fail(path, "ElementType", f"{element!r} is not one of {sorted(ELEMENT_TYPES)}")
    order = _first(header, BYTE_ORDER_KEYS)
    big_endian = _flag(path, *order) if order else False
    dtype = np.dtype(ELEMENT_TYPES[element]).newbyteorder(">" if big_endian else "<")
    spacing, offset, direction = _geometry(path, header)
    nx, ny, nz = (int(v) for v in dims)
    data = _data_bytes(path, header, header_end, nx * ny * nz * dtype.itemsize)
    array = np.frombuffer(data, dtype=dtype).reshape(nz, ny, nx).astype(np.float32)
    normal = np.cross(direction[0], direction[1])
    along = float(direction[2] @ normal)
    if along < -1.0 + ORIENTATION_TOLERANCE:  # slices stored head to feet against the normal: flip to its order
        offset = offset + (nz - 1) * spacing[2] * direction[2]
        array = np.ascontiguousarray(array[::-1])
    elif along < 1.0 - ORIENTATION_TOLERANCE:
        raise _fail(path, DIRECTION_KEYS[0], "the z axis is not perpendicular to the x and y axes "
                                             "(sheared or tilted stacks are not supported)")
    data_file = header[DATA_FILE_KEY]
    return Volume(array=array, spacing_mm=(float(spacing[2]), float(spacing[1]), float(spacing[0])),
                  origin_mm=(float(offset[0]), float(offset[1]), float(offset[2])),
                  direction=np.stack([direction[0], direction[1], normal]), sop_instance_uids=[],
                  paths=[path] if data_file == "LOCAL" else [path, path.parent / data_file],
                  series_instance_uid=path.stem, study_instance_uid="")
