"""The one exception family for mistakes a user can make."""


class TextgenError(Exception):
    """A problem the user can act on; its message is one line that says what to do."""


class CorpusError(TextgenError):
    """The corpus cannot be read or is unfit for training."""


class VocabularyError(TextgenError):
    """Text holds characters the vocabulary does not know."""


class CheckpointError(TextgenError):
    """A run directory is missing, incomplete, damaged, incompatible or in use."""


class StorageError(TextgenError):
    """A file could not be written: no space, no permission or an I/O error."""


class OptionsError(TextgenError):
    """Options that contradict each other or the run they apply to (a usage error, exit 2)."""
