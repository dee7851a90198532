"""Tasks: the spec (one YAML each; ``data=custom``: your own file), loading and checking rows, and drawing budgets
and demonstrations."""

from promptlab.tasks import custom  # noqa: F401  (registers the ${custom_name:} resolver data/custom.yaml uses)
from promptlab.tasks.loading import Task, load_task
from promptlab.tasks.sampling import sample_demos, training_subset
from promptlab.tasks.spec import Generation, TaskSpec

__all__ = ["Generation", "Task", "TaskSpec", "load_task", "sample_demos", "training_subset"]
