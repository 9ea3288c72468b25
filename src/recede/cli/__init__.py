"""The ``recede`` command line: train, compare, demo, bench, reproduce, pretrain (and select).

One module per command (:mod:`recede.cli.train`, ...) declares its options and turns them into
the library's calls (a :class:`~recede.runs.config.RunConfig` for :func:`recede.runs.run.run`);
:mod:`recede.cli.options` holds the option helpers they share.  No library module imports this
package or argparse.

Every subcommand takes ``--config FILE.yaml`` (:mod:`recede.config`), checks everything it was
given before it writes anything (:mod:`recede.runs.preflight`), then starts the run: it writes its
resolved options to ``config.yaml`` in its ``--out`` folder and works.  Bad input ends with one
line naming the problem and exit status 2, never a traceback; a run that fails (a non-finite
loss, a rank that dies or hangs) ends with one line and status 1; an interrupt with 130.
"""

from __future__ import annotations

import argparse
import os
import signal
import sys

from recede.cli.bench import add_bench_parser
from recede.cli.compare import add_compare_parser
from recede.cli.demo import add_demo_parser
from recede.cli.options import (
    Parser,
    add_config_option,
    add_overwrite_option,
    bound_options,
    parse_with_config,
    resolved,
    subcommands,
)
from recede.cli.pretrain import add_pretrain_parser
from recede.cli.reproduce import add_reproduce_parser
from recede.cli.select import add_select_parser
from recede.cli.train import add_train_parser
from recede.core.engine import NonFiniteLossError
from recede.parallel import data_parallel as distributed
from recede.parallel.launch import report_failure
from recede.runs import preflight


def build_parser() -> argparse.ArgumentParser:
    parser = Parser(prog="recede", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    add_train_parser(sub)
    add_compare_parser(sub)
    add_demo_parser(sub)
    add_bench_parser(sub)
    add_reproduce_parser(sub)
    add_select_parser(sub)
    add_pretrain_parser(sub)
    add_config_option(parser)
    add_overwrite_option(parser)
    bound_options(parser)  # every counter's range, stated once in recede.config.BOUNDS
    return parser


def _fail(command: str, kind: str, err: BaseException, status: int) -> int:
    message = " ".join(str(err).split()) or type(err).__name__
    report_failure(kind, err)  # for recede.parallel.launch, when this is one of its ranks
    print(f"{command}: {kind}: {message[:2000]}", file=sys.stderr)
    return status


def _check_environment() -> None:
    """The environment variables a run reads: a launcher's (:func:`recede.parallel.data_parallel.check_env`)
    and ``OMP_NUM_THREADS`` (an invalid value was taken out of the environment when recede was
    imported, before libgomp could warn about it; see ``recede/__init__.py``)."""
    from recede._environment import INVALID_OMP_NUM_THREADS

    if INVALID_OMP_NUM_THREADS is not None:
        raise ValueError(
            f"the environment variable OMP_NUM_THREADS="
            f"{INVALID_OMP_NUM_THREADS[:40]!r} is not a positive integer; "
            "unset it or give a number of threads"
        )
    distributed.check_env()


def main(argv: list[str] | None = None) -> int:
    """Run the command line ``argv`` (default ``sys.argv[1:]``); return the exit status.

    Exit 2 (bad input) comes with one line and, when the run had started (``config.yaml``
    written, an earlier run moved aside by ``--overwrite``), puts the results folder back as
    it was (:func:`recede.runs.preflight.rollback`); so does a failed write or an interrupt before
    the first training step."""
    entry = argv is None
    parser = build_parser()
    argv = sys.argv[1:] if argv is None else list(argv)
    name = next((a for a in argv if a in subcommands(parser)), None)
    command = f"recede {name}" if name else "recede"  # for errors before the parse ends
    preflight.reset()  # nothing is pending from an earlier call in this process
    try:
        _check_environment()
        args = parse_with_config(parser, argv)
        args.argv = argv  # recede train --nproc N starts itself again in N processes
        args.resolved = resolved(parser, args)  # what preflight.start writes to config.yaml
        preflight.check_out(args)
        status = args.run(args)
        preflight.commit()
        return status
    except (ValueError, FileNotFoundError) as err:
        preflight.rollback()
        return _fail(command, "error", err, 2)
    except (NonFiniteLossError, distributed.RankFailure) as err:
        preflight.commit()
        return _fail(command, "stopped", err, 1)
    except OSError as err:  # before training: the input's fault (exit 2); after: a failed write
        if preflight.rollback():
            return _fail(command, "error", err, 2)
        return _fail(command, "failed", err, 1)
    except KeyboardInterrupt:
        preflight.rollback()
        report_failure("interrupted", None)
        print(f"{command}: interrupted", file=sys.stderr)
        return 130
    finally:
        if entry:  # an interrupt while the interpreter ends still gets its line, not a traceback
            signal.signal(signal.SIGINT, _interrupted_at_exit(command))


def _interrupted_at_exit(command: str):
    def handler(signum, frame) -> None:
        os.write(2, f"{command}: interrupted\n".encode())
        os._exit(130)

    return handler


if __name__ == "__main__":
    sys.exit(main())
