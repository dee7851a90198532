"""User mistakes (a cause and a fix, shown without a traceback) and a run that diverged."""


class ConfigError(Exception):
    """A user-facing error: what is wrong (``problem``) and what to do about it (``fix``)."""

    def __init__(self, problem: str, fix: str):
        super().__init__(f"{problem}\n  fix: {fix}")
        self.problem = problem
        self.fix = fix


class Diverged(RuntimeError):
    """Training or scoring produced non-finite numbers: the run ends as ``diverged``, never as a result."""

    def __init__(self, step: int, what: str):
        super().__init__(f"diverged at step {step}: {what}")
        self.step = step
        self.what = what
