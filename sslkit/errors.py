"""The errors sslkit turns into exit codes (see DESIGN.md section 2)."""


class UsageError(Exception):
    """Bad usage or bad input: one line on stderr, exit code 2."""


class TrainingFailed(Exception):
    """A run that started but cannot go on (e.g. a non-finite loss): exit code 1."""


class WriteFailed(TrainingFailed):
    """A checkpoint or output file could not be written (disk full, permissions): exit code 1, the previous
    file kept."""


class Interrupted(Exception):
    """SIGINT/SIGTERM during training, after the checkpoint was written: exit 128 + signal."""

    def __init__(self, message: str, exit_code: int = 130):
        super().__init__(message)
        self.exit_code = exit_code
