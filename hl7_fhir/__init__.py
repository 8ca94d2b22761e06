"""hl7_fhir package."""
