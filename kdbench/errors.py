"""Errors kdbench reports to the user as one line (the CLI prints them and exits non-zero)."""


class KdbenchError(Exception):
    """A user-facing problem: the message names what is wrong and how to fix it."""


def did_you_mean(name: str, known) -> str:
    """`` (did you mean 'x'?)`` for the closest of ``known`` to a misspelt ``name``, or ""."""
    import difflib

    close = difflib.get_close_matches(str(name), [str(k) for k in known], n=1, cutoff=0.6)
    return f" (did you mean {close[0]!r}?)" if close else ""


class DataError(KdbenchError):
    """A dataset, a data folder or a media file is missing or unusable."""


class VideoError(DataError):
    """A video could not be read or written (corrupt, unreadable, no frames)."""


class LockUnsupportedError(KdbenchError):
    """The file system of the lock folder has no working advisory file locks (flock)."""


def first_line(exc: BaseException, limit: int = 160) -> str:
    """An exception's message on one line (whitespace folded, at most ``limit`` characters),
    or its type's name when it has none: the reason part of a one-line error."""
    return " ".join(str(exc).split())[:limit] or type(exc).__name__


def os_error_line(exc: OSError) -> str:
    """The one line a disk-full or permission error is reported with: what, which file, and
    that the finished work is kept."""
    where = f" ({exc.filename})" if exc.filename else ""
    return (f"kdbench: error: {exc.strerror or exc}{where}; finished runs and epochs are kept "
            "- free space or fix the permissions, then run the same command again")
