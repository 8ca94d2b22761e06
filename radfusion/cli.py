"""The ``radfusion`` command line: serve, echo, status, requeue, acknowledge, reprocess, config, demo, train,
evaluate."""

from __future__ import annotations

import argparse
import json
import logging
import os
import signal
import sys
import threading
from pathlib import Path

from sqlalchemy.exc import OperationalError

from dicom_node.errors import DicomNodeError
from radfusion.errors import RadfusionError
from radfusion.routing import compile_routing
from radfusion.settings import Settings, load_settings

log = logging.getLogger("radfusion")


def _settings(args: argparse.Namespace) -> Settings:
    config = args.config or os.environ.get("RADFUSION_CONFIG")
    return load_settings(Path(config) if config else None)


def _keep_private(storage: Path) -> None:
    """Make the storage folder the service user's alone (mode 0700): it holds images, the database and results.
    A folder made before the umask, or by hand, may let every local user read them."""
    try:
        storage.chmod(0o700)
    except OSError as exc:  # not ours (a mount point): say so, the files in it are 0600 all the same
        log.warning("could not make %s private to the service's user (%s); check its permissions", storage, exc)


def cmd_serve(args: argparse.Namespace) -> int:
    """Run the server until SIGTERM or Ctrl-C."""
    from radfusion.logs import configure_logging
    from radfusion.service import Service

    settings = _settings(args)
    configure_logging(settings.log_level)
    os.umask(0o077)  # images, database, results and quarantine: for the service's user only
    service = Service(settings)
    _keep_private(settings.storage_path)
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    service.start()
    stop.wait()
    log.info("stopping: no new associations; running jobs finish")
    service.stop()
    return 0


def cmd_echo(args: argparse.Namespace) -> int:
    """C-ECHO a configured destination."""
    from dicom_node.scu import echo
    from radfusion.destinations import remote_node, tls_context

    settings = _settings(args)
    try:
        dest = settings.destination(args.destination)
    except KeyError:
        names = ", ".join(d.name for d in settings.destinations) or "none configured"
        raise RadfusionError(f"no destination named {args.destination!r} (destinations: {names})") from None
    seconds = echo(remote_node(dest), settings.dicom.ae_title, settings.retry.timeout_s,
                   tls_context=tls_context(settings, dest))
    print(f"C-ECHO {dest.name} ({dest.ae_title}@{dest.host}:{dest.port}): success in {seconds * 1000:.1f} ms")
    return 0


def cmd_status(args: argparse.Namespace) -> int:
    """Print queue depth, recent jobs, failures and pending deliveries; with ``--check``, only what needs someone,
    and exit 1 if anything does (for a monitoring system)."""
    from radfusion.db import open_existing
    from radfusion.status import collect_status, format_check, format_status

    settings = _settings(args)
    db = open_existing(settings.effective_database_url)
    status = collect_status(db, settings.storage_path)
    if args.json:
        print(json.dumps(status, indent=2))
    else:
        print(format_check(status) if args.check else format_status(status))
    return 1 if args.check and status["attention"] else 0


def cmd_acknowledge(args: argparse.Namespace) -> int:
    """Mark failed jobs and deliveries whose cause cannot be fixed as seen, with a reason for the audit trail."""
    from radfusion.acknowledgement import acknowledge_failures
    from radfusion.db import open_existing

    settings = _settings(args)
    acknowledge_failures(open_existing(settings.effective_database_url), args.job, args.delivery, args.reason)
    print(f"acknowledged {len(args.job)} job(s) and {len(args.delivery)} delivery(ies); radfusion status --check "
          "no longer reports them")
    return 0


def cmd_requeue(args: argparse.Namespace) -> int:
    """Put failed deliveries back in the queue (after fixing what made them fail)."""
    from radfusion.db import open_existing
    from radfusion.delivery import requeue_failed

    if bool(args.ids) == args.all_failed:
        raise RadfusionError("requeue needs delivery ids (see radfusion status) or --all-failed, not both")
    settings = _settings(args)
    ids = requeue_failed(open_existing(settings.effective_database_url), args.ids or None)
    print(f"requeued {len(ids)} deliveries: {', '.join(map(str, ids)) or 'none'}; a running server sends them "
          f"within its delivery interval")
    return 0


def cmd_reprocess(args: argparse.Namespace) -> int:
    """Analyse finished studies again (after a routing or model change, or a failed job's cause is fixed)."""
    from radfusion.assembly import reopen_studies, study_uids_of_accessions
    from radfusion.db import open_existing

    if not args.study_uids and not args.accession:
        raise RadfusionError("reprocess needs Study Instance UIDs or --accession numbers (see radfusion status)")
    settings = _settings(args)
    db = open_existing(settings.effective_database_url)
    uids = reopen_studies(db, [*args.study_uids, *study_uids_of_accessions(db, args.accession)])
    print(f"re-opened {len(uids)} studies: {', '.join(uids)}; a running server analyses them again within "
          f"{settings.stability.quiet_timeout_s:g} s, with its current rules and models")
    return 0


def cmd_config(args: argparse.Namespace) -> int:
    """Validate the configuration (the routing rules' patterns too) and print the effective values, secrets
    masked."""
    settings = _settings(args)
    compile_routing(settings.routing)
    print(json.dumps(settings.redacted(), indent=2))
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    """Synthetic studies through the whole server on free ports; prints findings and alert."""
    from radfusion.demo import run_demo

    return run_demo(Path(args.workdir) if args.workdir else None, rows=args.rows)


def cmd_model(args: argparse.Namespace) -> int:
    """``train`` / ``evaluate``: handed to the model tooling with all its arguments."""
    from ai_engine.training.cli import main as model_main

    return model_main([args.command, *args.arguments])


def build_parser() -> argparse.ArgumentParser:
    """The argument parser (subcommands)."""
    parser = argparse.ArgumentParser(prog="radfusion", description=__doc__)
    parser.add_argument("--config", help="YAML settings file (default: $RADFUSION_CONFIG, else built-in defaults)")
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("serve", help="run the DICOM listener, pipeline and deliveries").set_defaults(func=cmd_serve)
    echo = sub.add_parser("echo", help="C-ECHO a configured destination")
    echo.add_argument("destination")
    echo.set_defaults(func=cmd_echo)
    status = sub.add_parser("status", help="queue depth, recent jobs, failures, pending deliveries")
    status.add_argument("--json", action="store_true")
    status.add_argument("--check", action="store_true",
                        help="print only what needs someone (or OK) and exit 1 if anything does")
    status.set_defaults(func=cmd_status)
    requeue = sub.add_parser("requeue", help="send failed deliveries again once their cause is fixed")
    requeue.add_argument("ids", nargs="*", type=int, help="delivery ids, as radfusion status lists them")
    requeue.add_argument("--all-failed", action="store_true", help="every failed delivery")
    requeue.set_defaults(func=cmd_requeue)
    acknowledge = sub.add_parser("acknowledge", help="mark failed jobs or deliveries that cannot be fixed as seen")
    acknowledge.add_argument("--job", action="append", type=int, default=[], metavar="ID", help="a failed job id")
    acknowledge.add_argument("--delivery", action="append", type=int, default=[], metavar="ID",
                             help="a failed delivery id")
    acknowledge.add_argument("--reason", required=True, help="why, for the audit trail")
    acknowledge.set_defaults(func=cmd_acknowledge)
    reprocess = sub.add_parser("reprocess", help="analyse finished studies again with the current rules and models")
    reprocess.add_argument("study_uids", nargs="*", metavar="STUDY_UID", help="Study Instance UIDs (radfusion status)")
    reprocess.add_argument("--accession", action="append", default=[], metavar="NUMBER",
                           help="a study by its accession number (repeatable)")
    reprocess.set_defaults(func=cmd_reprocess)
    sub.add_parser("config", help="validate the configuration and print it").set_defaults(func=cmd_config)
    demo = sub.add_parser("demo", help="run synthetic studies through a local server and print the results")
    demo.add_argument("--workdir", help="keep the demo's files here (default: a temporary directory)")
    demo.add_argument("--rows", type=int, default=256, help="image size of the synthetic studies")
    demo.set_defaults(func=cmd_demo)
    for name, text in (("train", "train a deep detector on a synthetic cohort or a --data-dir dataset "
                                 "(TASK: ich, nodule, mammo)"),
                       ("evaluate", "evaluate a deep detector and its baseline on a held-out cohort")):
        sub.add_parser(name, help=text, add_help=False).set_defaults(func=cmd_model)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Entry point of the console script."""
    parser = build_parser()
    args, extra = parser.parse_known_args(argv)
    if args.func is cmd_model:  # everything after the command belongs to the model tooling
        args.arguments = extra
    elif extra:
        parser.error(f"unrecognized arguments: {' '.join(extra)}")
    try:
        return int(args.func(args))
    except (RadfusionError, DicomNodeError) as exc:
        print(f"radfusion: {exc}", file=sys.stderr)
        return 2
    except OperationalError as exc:  # the database is down or locked: its error names no value of a row
        print(f"radfusion: the database cannot be used: {type(exc.orig).__name__}: {str(exc.orig).strip()}",
              file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
