"""What the job entry points share: logging, config loading with overrides, and exit codes.

Exit status 2 means a problem the user can fix (configuration, inputs, bundle, output), reported in one
message before any cluster work; 1 means the job itself failed.
"""

from __future__ import annotations

import argparse
import atexit
import logging
import os
import sys
import traceback
from collections.abc import Callable
from pathlib import Path

from rayood.bundle import BundleError
from rayood.config import ConfigError, RayoodConfig, load_config, parse_config, with_overrides
from rayood.data.sources import InputError
from rayood.report.guard import OutputError
from rayood.report.lease import LeaseError
from rayood.storage import StorageError

USER_ERRORS = (ConfigError, InputError, BundleError, OutputError, LeaseError, StorageError)
DEFAULT_CONFIG = Path(__file__).resolve().parents[1] / "configs" / "demo.yaml"


def base_parser(description: str) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument(
        "--config", help="YAML config (default: the embedded demo when the job is given no data, else neutral defaults)"
    )
    parser.add_argument("--overwrite", action="store_true", default=None, help="replace an existing result")
    parser.add_argument("--verbose", action="store_true", help="show Ray's own output (worker logs, progress blocks)")
    return parser


def job_config(args: argparse.Namespace, *data_arguments: object) -> RayoodConfig:
    """The config a job runs with: ``--config`` when given; the embedded demo when the command line names no data
    (``python jobs/screen.py`` alone runs the demo); neutral defaults otherwise, so that a user's own corpus never
    picks up the demo's passthrough columns, truth column or paths."""
    if args.config:
        config = load_config(args.config)
    elif any(value not in (None, [], ()) for value in data_arguments):
        config = parse_config({}, "the defaults (no --config)")
    else:
        config = load_config(DEFAULT_CONFIG)
    return with_overrides(config, "ray", verbose=True) if getattr(args, "verbose", False) else config


def run(main: Callable[[argparse.Namespace], None], parser: argparse.ArgumentParser) -> None:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    args = parser.parse_args()
    try:
        main(args)
    except USER_ERRORS as error:
        print(f"error: {error}", file=sys.stderr)
        leave(2)
    except Exception:
        traceback.print_exc()
        leave(1)
    leave(0)


def leave(status: int) -> None:
    """End a job process with ``status`` once its work is done: the exit handlers run (Ray's shutdown, logging's,
    the HTTP spool's cleanup), output is flushed, and then the process ends without CPython's finalisation and
    the C++ static destructors after it. Native thread pools (Arrow's readers') torn down there can abort a
    finished process with SIGABRT ("terminate called without an active exception", apache/arrow#34314), which
    turned a refused audit's status 2 into -6 once in CI."""
    sys.stdout.flush()
    sys.stderr.flush()
    atexit._run_exitfuncs()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(status)
