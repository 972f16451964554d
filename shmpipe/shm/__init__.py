"""Shared-memory structures beyond the slot ring: live parameters, the preview tap."""
