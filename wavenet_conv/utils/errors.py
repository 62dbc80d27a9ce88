"""User-facing errors, and the guard that turns them into a one-line message and exit status 2."""
import functools
import sys


class UserError(Exception):
    """A mistake in what the user gave us (a file, a flag, a checkpoint): reported without a traceback."""


class DatasetError(UserError):
    """The input file cannot be used as a one-item-per-line dataset."""


class CheckpointError(UserError):
    """A checkpoint is missing, corrupt, or does not fit what it is used with."""


def exit_on_user_error(main):
    """Decorate a CLI `main(argv=None, ...)`: a UserError prints `error: ...` on stderr and exits with status 2."""

    @functools.wraps(main)
    def guarded(argv=None, **kwargs):
        try:
            return main(argv, **kwargs)
        except UserError as e:
            print(f"error: {e}", file=sys.stderr)
            raise SystemExit(2) from None

    return guarded
