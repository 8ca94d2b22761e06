"""Coded concepts the report writers use, one table per meaning.

Codes are checked against pydicom's DICOM/SNOMED dictionaries (DICOM PS3.16) where they
appear there; each SEG property type is from CID 7151 or the mammography CIDs.
"""

from __future__ import annotations

from pydicom.sr.coding import Code

from ai_engine.results import FindingType, Task

FINDING_TYPE_CODES: dict[FindingType, Code] = {
    FindingType.HEMORRHAGE: Code("50960005", "SCT", "Hemorrhage"),
    FindingType.NODULE: Code("27925004", "SCT", "Nodule"),
    FindingType.MASS: Code("4147007", "SCT", "Mass"),
    FindingType.CALCIFICATION_CLUSTER: Code("129769006", "SCT", "Calcification Cluster"),
}

# What the case-level "present/absent" evaluation is about, per task.
CASE_FINDING_CODES: dict[Task, Code] = {
    Task.ICH: Code("1386000", "SCT", "Intracranial hemorrhage"),
    Task.LUNG_NODULE: Code("27925004", "SCT", "Nodule"),
    Task.MAMMOGRAPHY: Code("49755003", "SCT", "Morphologically abnormal structure"),
}

PROCEDURE_CODES: dict[Task, Code] = {
    Task.ICH: Code("303653007", "SCT", "CT of head"),
    Task.LUNG_NODULE: Code("169069000", "SCT", "CT of chest"),
    Task.MAMMOGRAPHY: Code("71651007", "SCT", "Mammography"),
}

FINDING_SITE_CODES: dict[Task, Code] = {
    Task.ICH: Code("128319008", "SCT", "Intracranial structure"),
    Task.LUNG_NODULE: Code("39607008", "SCT", "Lung"),
    Task.MAMMOGRAPHY: Code("76752008", "SCT", "Breast"),
}

LATERALITY_CODES: dict[str, Code] = {
    "L": Code("7771000", "SCT", "Left"),
    "R": Code("24028007", "SCT", "Right"),
    "B": Code("51440002", "SCT", "Right and left"),
}
"""A finding's ``laterality`` as the finding site's laterality (CID 244)."""

MORPHOLOGICALLY_ABNORMAL_STRUCTURE = Code("49755003", "SCT", "Morphologically Abnormal Structure")
PRESENT = Code("52101004", "SCT", "Present")
ABSENT = Code("272519000", "SCT", "Absent")
QUALITATIVE_EVALUATIONS = Code("C0034375", "UMLS", "Qualitative Evaluations")
FINDING_SITE = Code("363698007", "SCT", "Finding Site")
COMMENT = Code("121106", "DCM", "Comment")
CLINICAL_INFORMATION = Code("55752-0", "LN", "Clinical Information")
VOLUME = Code("118565006", "SCT", "Volume")
DIAMETER = Code("81827009", "SCT", "Diameter")
PROBABILITY = Code("122157", "DCM", "Probability")
UNIT_ML = Code("ml", "UCUM", "milliliter")
UNIT_MM = Code("mm", "UCUM", "millimeter")
UNIT_PROBABILITY = Code("{probability}", "UCUM", "probability")
UNIT_RATIO = Code("{ratio}", "UCUM", "ratio")
# No standard concept exists for the weight a fusion model gave each input modality of a case;
# radfusion's private coding scheme 99RADF names them (0..1, summing to 1 over the used modalities).
MODALITY_WEIGHT_CODES: dict[str, Code] = {
    "image": Code("MW-IMAGE", "99RADF", "Fusion weight of the image"),
    "clinical": Code("MW-CLINICAL", "99RADF", "Fusion weight of the clinical record"),
    "text": Code("MW-TEXT", "99RADF", "Fusion weight of the clinical note"),
}
# CID 7162 "Surface Processing Algorithm Families", used as the algorithm family.
ARTIFICIAL_INTELLIGENCE = Code("123110", "DCM", "Artificial Intelligence")
MORPHOLOGICAL_OPERATIONS = Code("123104", "DCM", "Morphological Operations")
PROCESSING_ALGORITHM = Code("1630", "99IHE", "Processing Algorithm")
