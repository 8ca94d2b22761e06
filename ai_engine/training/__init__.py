"""Training and evaluation of the deep detectors.

- ``cli``: ``train(task, ...)`` / ``evaluate(task, ...)`` dispatch to ``tasks/<task>.py``;
  importing it does not import torch (the application CLI imports it at start-up).
- ``loop``: the common, seeded training loop with early stopping and checkpoints (torch).
- ``fusion_fit``: what every task does with its fusion heads (train the three modes with the same
  modality dropout, temperature and threshold on the calibration split, ONNX export, the
  fusion-experiment table, the head-only refit's configs).
- ``tasks/{ich,nodule,mammo}.py``: one module per task, each exposing
  ``train(*, out_dir, epochs, cohort_size, seed, quick) -> Path`` (the bundle directory written),
  ``train_fusion_only(*, bundle, quick) -> Path`` (refit the heads on the bundle's unchanged image
  network) and ``evaluate(*, bundle, cohort_size, seed, out_dir) -> dict`` (the metrics also
  written as ``metrics.json`` into ``out_dir``).
"""
