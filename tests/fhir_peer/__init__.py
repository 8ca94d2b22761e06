"""FHIR test peer (Medplum FHIR router on node) and its pytest fixture."""
