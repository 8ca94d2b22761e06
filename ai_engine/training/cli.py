"""``train`` / ``evaluate`` for a task, dispatching to ``ai_engine.training.tasks.<task>``; also a CLI.

Usage (until ``radfusion train|evaluate`` wraps these):

    python -m ai_engine.training.cli train ich [--epochs N] [--cohort-size N] [--seed S] [--quick] [--out-dir D]
                                               [--data-dir REAL_DATA [--pixel-spacing-mm MM (mammo)]]
    python -m ai_engine.training.cli train ich --fusion-only [--bundle NAME_OR_DIR] [--quick]
    python -m ai_engine.training.cli train mammo --density-only [--bundle NAME_OR_DIR]
    python -m ai_engine.training.cli train nodule --threshold-only [--bundle NAME_OR_DIR]
    python -m ai_engine.training.cli train ich --note-vocabulary-only [--bundle NAME_OR_DIR]
    python -m ai_engine.training.cli evaluate ich [--bundle NAME_OR_DIR] [--cohort-size N] [--seed S] [--out-dir D]
    python -m ai_engine.training.cli evaluate ich --data-dir REAL_DATA --out-dir D [--bundle NAME_OR_DIR]

``None`` for an option means the task module's default (documented in its model card).
Importing this module is cheap: the task module (and torch) is imported on the call.
"""

from __future__ import annotations

import argparse
import importlib
import json
import logging
from pathlib import Path
from types import ModuleType
from typing import Any

from ai_engine.bundle import BUNDLES_DIR
from ai_engine.errors import AiEngineError

REFITS = ("--fusion-only", "--density-only", "--threshold-only", "--note-vocabulary-only")  # in place, on a bundle
TASK_MODULES: dict[str, str] = {
    "ich": "ai_engine.training.tasks.ich",
    "nodule": "ai_engine.training.tasks.nodule",
    "mammo": "ai_engine.training.tasks.mammo",
}


def _task_module(task: str) -> ModuleType:
    if task not in TASK_MODULES:
        raise AiEngineError(f"unknown training task {task!r}; known: {sorted(TASK_MODULES)}")
    return importlib.import_module(TASK_MODULES[task])


def _dataset_options(task: str, data_dir: Path | None, pixel_spacing_mm: float | None) -> dict[str, Any]:
    """The dataset keyword arguments a task receives (only those given, so tasks keep their defaults)."""
    if pixel_spacing_mm is not None and (task != "mammo" or data_dir is None):
        raise AiEngineError("--pixel-spacing-mm is the spacing of mammography dataset images without one in "
                            "their header: it goes with a mammo --data-dir only")
    if pixel_spacing_mm is not None and not 0.01 <= pixel_spacing_mm <= 1.0:
        raise AiEngineError(f"--pixel-spacing-mm must be 0.01-1.0 mm, got {pixel_spacing_mm}")
    extra: dict[str, Any] = {} if data_dir is None else {"data_dir": data_dir}
    if pixel_spacing_mm is not None:
        extra["pixel_spacing_mm"] = pixel_spacing_mm
    return extra


def train(task: str, *, out_dir: Path | None = None, epochs: int | None = None, cohort_size: int | None = None,
          seed: int = 0, quick: bool = False, data_dir: Path | None = None,
          pixel_spacing_mm: float | None = None) -> Path:
    """Generate the task's training cohort, train, calibrate, export; returns the bundle directory.

    ``data_dir`` (real data in the layout of the task's model card) and ``pixel_spacing_mm`` (mammo:
    the spacing of dataset images whose header has none) are passed on only when given.
    """
    extra = _dataset_options(task, data_dir, pixel_spacing_mm)
    if data_dir is not None and (out_dir is None or Path(out_dir).resolve().is_relative_to(BUNDLES_DIR.resolve())):
        raise AiEngineError("train --data-dir needs an --out-dir outside the packaged bundles: a model trained on a "
                            "local dataset is written beside them, never over the one the server serves and its "
                            "model card describes (serve it through model_bundles once validated)")
    root = _task_module(task).train(out_dir=out_dir, epochs=epochs, cohort_size=cohort_size, seed=seed,
                                    quick=quick, **extra)
    _note_vocabulary(task, root)
    return root


def train_fusion_only(task: str, *, bundle: str | Path | None = None, quick: bool = False) -> Path:
    """Refit the fusion heads of a trained bundle in place on its unchanged image network (minor version bump).

    The task rebuilds the training cohort and splits recorded in the bundle's metadata (same seed),
    trains the heads of every fusion mode, refits temperature and threshold on the calibration
    split and re-exports ``fusion.onnx`` and ``fusion_<mode>.pt``.
    """
    root = _task_module(task).train_fusion_only(bundle=bundle, quick=quick)
    _note_vocabulary(task, root)
    return root


def train_note_vocabulary_only(task: str, *, bundle: str | Path | None = None) -> Path:
    """Write a bundle's note vocabulary (``ai_engine.training.note_vocabulary``) in place."""
    from ai_engine.bundle import resolve_bundle

    root = resolve_bundle(bundle, f"{task}_fusion").root
    _note_vocabulary(task, root)
    return root


def _note_vocabulary(task: str, root: Path) -> None:
    """Every bundle ``train`` writes gets the note vocabulary of its training notes (its generator's or dataset's)."""
    from ai_engine.training.note_vocabulary import write_vocabulary

    vocabulary = write_vocabulary(task, Path(root))
    logging.getLogger(__name__).info("note vocabulary of %s: %d terms, notes of at least %d",
                                     root, len(vocabulary.terms), vocabulary.min_terms)


def train_density_only(task: str, *, bundle: str | Path | None = None) -> Path:
    """Refit only the breast-density model of a mammography bundle in place (patch version bump)."""
    if task != "mammo":
        raise AiEngineError(f"--density-only is a mammography option; task {task!r} has no density model")
    return _task_module(task).train_density_only(bundle=bundle)


def train_threshold_only(task: str, *, bundle: str | Path | None = None) -> Path:
    """Refit only the reporting threshold of a lung-nodule bundle in place (patch version bump)."""
    if task != "nodule":
        raise AiEngineError(f"--threshold-only is a lung-nodule option; task {task!r} fits its threshold with "
                            "its heads (--fusion-only)")
    return _task_module(task).train_threshold_only(bundle=bundle)


def evaluate(task: str, *, bundle: str | Path | None = None, cohort_size: int | None = None, seed: int | None = None,
             out_dir: Path | None = None, data_dir: Path | None = None,
             pixel_spacing_mm: float | None = None) -> dict[str, Any]:
    """Evaluate a bundle on a held-out cohort (other seed, shifted acquisition) against the baseline.

    ``data_dir``: on a dataset in the task's training layout instead (an institution validating a
    model on its own cases); passed on only when given, like ``train``'s.
    """
    extra = _dataset_options(task, data_dir, pixel_spacing_mm)
    return _task_module(task).evaluate(bundle=bundle, cohort_size=cohort_size, seed=seed, out_dir=out_dir, **extra)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m ai_engine.training.cli",
                                     description="Train or evaluate a radfusion deep detector.")
    sub = parser.add_subparsers(dest="command", required=True)
    p_train = sub.add_parser("train", help="train a task's model and write its bundle")
    p_train.add_argument("task", choices=sorted(TASK_MODULES))
    p_train.add_argument("--out-dir", type=Path, default=None, help="bundle directory (default: the packaged one)")
    p_train.add_argument("--epochs", type=int, default=None)
    p_train.add_argument("--cohort-size", type=int, default=None)
    p_train.add_argument("--seed", type=int, default=0)
    p_train.add_argument("--quick", action="store_true", help="tiny cohort and few epochs (smoke test)")
    p_train.add_argument("--data-dir", type=Path, default=None,
                         help="train on real data in the layout documented in the task's model card")
    p_train.add_argument("--pixel-spacing-mm", type=float, default=None,
                         help="mammo --data-dir: pixel spacing of images without one in the header (default 0.05)")
    p_train.add_argument("--fusion-only", action="store_true",
                         help="refit only the fusion heads of --bundle on its unchanged image network")
    p_train.add_argument("--density-only", action="store_true",
                         help="mammo: refit only the density model of --bundle (patch version)")
    p_train.add_argument("--threshold-only", action="store_true",
                         help="nodule: refit only the reporting threshold of --bundle on its calibration scans "
                              "(patch version)")
    p_train.add_argument("--note-vocabulary-only", action="store_true",
                         help="write the note vocabulary of --bundle's synthetic generator (the terms its heads "
                              "learned)")
    p_train.add_argument("--bundle", default=None,
                         help="with --fusion-only, --density-only, --threshold-only or --note-vocabulary-only: "
                              "bundle name or directory (default: the packaged one)")
    p_eval = sub.add_parser("evaluate", help="evaluate a bundle on a held-out cohort")
    p_eval.add_argument("task", choices=sorted(TASK_MODULES))
    p_eval.add_argument("--bundle", default=None, help="bundle name or directory (default: the packaged one)")
    p_eval.add_argument("--cohort-size", type=int, default=None)
    p_eval.add_argument("--seed", type=int, default=None, help="held-out seed (default: the task's)")
    p_eval.add_argument("--out-dir", type=Path, default=None, help="metrics/plots directory (default: model card)")
    p_eval.add_argument("--data-dir", type=Path, default=None,
                        help="evaluate on a dataset in the training layout of the task's model card (needs --out-dir)")
    p_eval.add_argument("--pixel-spacing-mm", type=float, default=None,
                        help="mammo --data-dir: pixel spacing of images without one in the header (default 0.05)")
    return parser


def main(argv: list[str] | None = None) -> int:
    """Command-line entry point; prints the bundle path or the metrics JSON."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    args = _parser().parse_args(argv)
    bundle = Path(args.bundle) if args.bundle and Path(args.bundle).is_dir() else args.bundle
    refits = [flag for flag in REFITS if args.command == "train" and getattr(args, flag[2:].replace("-", "_"))]
    if refits:
        if len(refits) > 1:
            raise AiEngineError(f"choose one of {', '.join(refits)}")
        ignored = [name for name in ("out_dir", "epochs", "cohort_size", "data_dir", "pixel_spacing_mm")
                   if getattr(args, name) is not None]
        if ignored or args.seed != 0:
            raise AiEngineError(f"{refits[0]} refits the bundle in place with its recorded cohort and seed; "
                                f"drop {['--' + n.replace('_', '-') for n in ignored] or ['--seed']}")
        if refits[0] == "--fusion-only":
            print(train_fusion_only(args.task, bundle=bundle, quick=args.quick))
        elif refits[0] == "--density-only":
            print(train_density_only(args.task, bundle=bundle))
        elif refits[0] == "--threshold-only":
            print(train_threshold_only(args.task, bundle=bundle))
        else:
            print(train_note_vocabulary_only(args.task, bundle=bundle))
    elif args.command == "train":
        if args.bundle is not None:
            raise AiEngineError(f"--bundle only goes with {', '.join(REFITS)} (a full training writes --out-dir)")
        print(train(args.task, out_dir=args.out_dir, epochs=args.epochs, cohort_size=args.cohort_size,
                    seed=args.seed, quick=args.quick, data_dir=args.data_dir, pixel_spacing_mm=args.pixel_spacing_mm))
    else:
        print(json.dumps(evaluate(args.task, bundle=bundle, cohort_size=args.cohort_size, seed=args.seed,
                                  out_dir=args.out_dir, data_dir=args.data_dir,
                                  pixel_spacing_mm=args.pixel_spacing_mm), indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
