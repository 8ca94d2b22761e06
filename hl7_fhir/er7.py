"""HL7 v2 ER7 text details: segment separators, escape sequences, and a tolerant MSH reader.

The tolerant reader exists so that a message hl7apy cannot parse still gets an ACK that
names its control id: the sender needs that to stop resending it.
"""

from __future__ import annotations

from dataclasses import dataclass

from hl7_fhir.errors import Hl7FhirError

HL7_CHARSETS = {  # MSH-18 (HL7 table 0211) -> Python codec
    "ASCII": "ascii", "8859/1": "latin-1", "8859/2": "iso-8859-2", "8859/5": "iso-8859-5", "8859/7": "iso-8859-7",
    "8859/9": "iso-8859-9", "8859/15": "iso-8859-15", "UNICODE UTF-8": "utf-8", "UNICODE": "utf-8",
}

DEFAULT_ENCODING = "^~\\&"


class Er7Error(Hl7FhirError):
    """Text that is not an HL7 v2 message at all (no readable MSH segment)."""


def normalize_segments(text: str) -> str:
    """Message text with ``\\r`` as the only segment separator (hl7apy needs that), no blank segments."""
    lines = text.replace("\r\n", "\r").replace("\n", "\r").split("\r")
    return "\r".join(line for line in lines if line.strip())


def escape(value: str, field_sep: str = "|", encoding: str = DEFAULT_ENCODING) -> str:
    """``value`` with the delimiter characters replaced by HL7 escape sequences (\\F\\, \\S\\ ...)."""
    component, repetition, esc, subcomponent = encoding[:4]
    table = {esc: "E", field_sep: "F", component: "S", repetition: "R", subcomponent: "T"}
    out = []
    for char in value:
        out.append(f"{esc}{table[char]}{esc}" if char in table else char)
    return "".join(out).replace("\r", f"{esc}X0D{esc}").replace("\n", f"{esc}X0A{esc}")


def unescape(value: str, field_sep: str = "|", encoding: str = DEFAULT_ENCODING) -> str:
    """Inverse of :func:`escape` for the delimiter sequences and \\X0D\\/\\X0A\\ (others kept as sent)."""
    component, repetition, esc, subcomponent = encoding[:4]
    table = {"E": esc, "F": field_sep, "S": component, "R": repetition, "T": subcomponent,
             "X0D": "\r", "X0A": "\n"}
    parts = value.split(esc)
    if len(parts) < 3:
        return value
    out = [parts[0]]
    index = 1
    while index < len(parts) - 1:
        code = parts[index]
        if code in table:
            out.append(table[code])
            out.append(parts[index + 1])
        else:
            out.append(f"{esc}{code}{esc}{parts[index + 1]}")
        index += 2
    if index == len(parts) - 1:
        out.append(esc + parts[index])
    return "".join(out)


@dataclass(frozen=True)
class MshFields:
    """MSH read field by field from raw text; ``field(n)`` is MSH-n as sent ('' when absent)."""

    field_sep: str
    encoding: str
    fields: tuple[str, ...]

    def field(self, number: int) -> str:
        """MSH-``number`` (MSH-1 is the field separator, MSH-2 the encoding characters)."""
        index = number - 1
        return self.fields[index] if index < len(self.fields) else ""

    def component(self, number: int, position: int) -> str:
        """Component ``position`` (1-based) of MSH-``number``."""
        parts = self.field(number).split(self.encoding[0])
        return parts[position - 1] if position - 1 < len(parts) else ""


def read_msh(text: str) -> MshFields:
    """The MSH segment of ``text`` without validating anything else; raises Er7Error if there is none."""
    first = normalize_segments(text.lstrip("\x0b")).split("\r", 1)[0]
    if not first.startswith("MSH") or len(first) < 8:
        raise Er7Error(f"message does not start with an MSH segment (it starts with {first[:3]!r})")  # no fields
    field_sep = first[3]
    parts = first.split(field_sep)
    encoding = parts[1]
    if len(encoding) < 4:
        raise Er7Error(f"MSH-2 encoding characters must be 4 characters, got {encoding!r}")
    # parts[0] is 'MSH' and MSH-1 is the separator itself, so MSH-n is parts[n - 1] for n >= 2.
    return MshFields(field_sep, encoding, (field_sep, *parts[1:]))
