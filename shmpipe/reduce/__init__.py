"""Reducers across frames in the publisher, with exactly-once state (docs/reducers.md).

``stage`` is the publisher's hook, ``checkpoint`` the state committed before the
acknowledgements, ``setup`` the reducers of a run and their checks before start, ``merge``
the partial results of several nodes combined.
"""
