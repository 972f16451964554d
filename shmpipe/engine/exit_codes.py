"""The exit status of ``shmpipe run``: what a script can tell apart."""

from __future__ import annotations

EXIT_OK = 0
"""The run ended normally: every frame processed and written."""
EXIT_FAILED = 1
"""The run failed: a kernel error under ``run.on_error = "fail"``, a process that died, frames in
flight that did not finish within ``run.drain_timeout_s``."""
EXIT_CONFIG_ERROR = 2
"""Configuration or resources: nothing was started."""
EXIT_FRAME_ERRORS = 3
"""The run ended normally, but some frames (or all) became error records."""
EXIT_SIGINT = 130
"""Stopped early by Ctrl-C (128 + SIGINT)."""
EXIT_SIGTERM = 143
"""Stopped early by SIGTERM (128 + SIGTERM)."""
EXIT_INTERRUPTED = EXIT_SIGINT

HELP = """exit status:
  0    the run ended normally: every frame processed and written
  1    the run failed: a kernel error under run.on_error = "fail", a process that died,
       frames in flight that did not finish within run.drain_timeout_s
  2    configuration or resources: nothing was started
  3    the run ended normally, but some frames (or all) became error records
       (run.on_error = "skip", quarantined frames, incomplete datasets): see the summary
  130  stopped early by Ctrl-C (SIGINT)
  143  stopped early by SIGTERM
       The first interrupt drains: no new messages; the frames in flight are finished and
       written. A second Ctrl-C given later stops at once, dropping them; repeated SIGTERMs
       (and a signal sent to the process and then its group, as `timeout` does) drain.
"""
