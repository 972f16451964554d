"""Observing a run: readers of the shared tables (never writers), metrics, progress, logs."""
