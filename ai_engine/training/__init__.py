"""Training and evaluation of the deep detectors.

- ``cli``: ``train(task, ...)`` / ``evaluate(task, ...)`` dispatch to ``tasks/<task>.py``;
  importing it does not import torch (the application CLI imports it at start-up).
- ``loop``: the common, seeded training loop with early stopping and checkpoints (torch).
- ``tasks/{ich,nodule,mammo}.py``: one module per task, each exposing
  ``train(*, out_dir, epochs, cohort_size, seed, quick) -> Path`` (the bundle directory written)
  and ``evaluate(*, bundle, cohort_size, seed, out_dir) -> dict`` (the metrics also written
  as ``metrics.json`` into ``out_dir``).
"""
