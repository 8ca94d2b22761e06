"""Readers of real (hospital or public) datasets in the layouts the model cards document.

One module per task; each turns a dataset directory into the same training units the synthetic
cohorts produce, so training and serving see identical preprocessing. A malformed dataset raises
``AiEngineError`` naming the file, row or column at fault.
"""
