"""Evaluation: the metric registry, answer filters, and ``evaluate()``."""
