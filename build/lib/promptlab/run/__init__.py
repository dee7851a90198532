"""Running: ``planning`` (every check before the model loads) and ``execute`` (the one pipeline every entry
point and tuning trial runs)."""

from promptlab.run.execute import run
from promptlab.run.planning import Plan, plan

__all__ = ["Plan", "plan", "run"]
