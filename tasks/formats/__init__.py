"""Readers and writers of the real competition file formats. Each fails with one message naming the file."""


class FormatError(ValueError):
    """Bad input: the message names the file (and the line, key or column) and what is wrong.

    The message is one line: line breaks a library put into the reason it quotes become spaces.
    """

    def __init__(self, message: object = "") -> None:
        super().__init__(" ".join(str(message).split()))
