"""Errors kdbench reports to the user as one line (the CLI prints them and exits non-zero)."""


class KdbenchError(Exception):
    """A user-facing problem: the message names what is wrong and how to fix it."""


class DataError(KdbenchError):
    """A dataset, a data folder or a media file is missing or unusable."""


class VideoError(DataError):
    """A video could not be read or written (corrupt, unreadable, no frames)."""
