"""Shared memory: the layout of the slot ring and its tables, the pipes between processes,
the live-parameter block and the preview tap."""
