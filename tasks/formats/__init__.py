"""Readers and writers of the real competition file formats. Each fails with one message naming the file."""


class FormatError(ValueError):
    """Bad input: the message names the file (and the line, key or column) and what is wrong."""
