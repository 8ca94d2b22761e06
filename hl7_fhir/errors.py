"""Root exception of the hl7_fhir package."""

from __future__ import annotations


class Hl7FhirError(Exception):
    """Base class of every error raised by hl7_fhir."""


class AlreadyStored(Hl7FhirError):
    """The message was stored meanwhile (a resend another connection stored first): a duplicate, not a failure."""
