"""The one exception type for user mistakes: a cause and a fix, shown without a traceback."""


class ConfigError(Exception):
    """A user-facing error: what is wrong (``problem``) and what to do about it (``fix``)."""

    def __init__(self, problem: str, fix: str):
        super().__init__(f"{problem}\n  fix: {fix}")
        self.problem = problem
        self.fix = fix
