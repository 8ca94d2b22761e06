"""Synthetic multimodal cohorts: phantom images + ground truth + ClinicalContext + free-text note.

One module per task (``ich``, ``nodule``, ``mammo``). Each draws patients from a stated causal
model (in the module docstring and the task's model card), can write each case as real DICOM
through ``ai_engine.synthetic.dicom_writer``, and takes its acquisition settings as
parameters so a held-out cohort can shift them.
"""
