"""Character sets of the objects radfusion writes: UTF-8 where the source's set cannot hold a result's text."""

from __future__ import annotations

import pydicom
from pydicom.charset import convert_encodings, custom_encoders, default_encoding

UTF8 = "ISO_IR 192"
TEXT_VRS = frozenset({"SH", "LO", "ST", "LT", "UT", "UC", "PN"})


def to_utf8(ds: pydicom.Dataset) -> None:
    """Switch ``ds`` to UTF-8: every text value decoded in its current character set first, so that a name or text
    read in another one (a Korean or Japanese name, with its escape sequences) is written out unchanged."""
    ds.decode()
    ds.SpecificCharacterSet = UTF8


def writable(text: str, charset: object) -> bool:
    """Whether every character of ``text`` is in the repertoire Specific Character Set ``charset`` declares. ASCII is
    in each; the default repertoire (no Specific Character Set) holds nothing else: pydicom writes other characters
    there as Latin-1 bytes no reader can know, and in another set as '?'."""
    if text.isascii():
        return True
    codecs = [codec for codec in convert_encodings(charset) if codec != default_encoding]  # type: ignore[arg-type]
    return all(character.isascii() or any(_encodes(codec, character) for codec in codecs) for character in text)


def _encodes(codec: str, character: str) -> bool:
    """Whether ``codec`` (a Python codec, or pydicom's own encoder of that name) can encode ``character``."""
    try:
        custom_encoders[codec](character) if codec in custom_encoders else character.encode(codec)
    except UnicodeError:
        return False
    return True


def utf8_where_needed(ds: pydicom.Dataset) -> None:
    """Switch a built result ``ds`` to UTF-8 (``to_utf8``) when a text value it holds, e.g. an EMR's error text, a
    detector's note or an algorithm's name, cannot be written in the Specific Character Set copied from its source."""
    charset = ds.get("SpecificCharacterSet")
    texts = (str(value) for element in ds.iterall() if element.VR in TEXT_VRS and element.value is not None
             for value in (element.value if element.VM > 1 else [element.value]))
    if not all(writable(text, charset) for text in texts):
        to_utf8(ds)
