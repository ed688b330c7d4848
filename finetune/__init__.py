"""Downstream tasks, one module per task, registered by name (comes with a later issue)."""
