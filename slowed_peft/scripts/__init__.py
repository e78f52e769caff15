"""Command-line entry points (TRL script style): ``slowed-sft``, ``slowed-eval``, ``slowed-demo``."""
