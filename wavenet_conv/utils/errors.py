"""User-facing errors, and the guards that turn them into a one-line message and exit status 2."""
import argparse
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


class ArgumentParser(argparse.ArgumentParser):
    """argparse with every mistake in the flags reported as one line (`error: ...`, exit status 2), as the
    commands' own checks report theirs, instead of the usage block followed by the message."""

    def error(self, message):
        raise UserError(f"{message} (see {self.prog} --help)")
