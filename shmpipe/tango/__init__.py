"""The Tango device of a pipeline: feedback to a Tango/Sardana control system.

``feed`` turns the run's shared tables and preview tap into the device's values (no Tango
import: usable and tested without pytango); ``device`` is the pytango device; ``server`` the
side process the supervisor starts when ``[tango] device`` is set.
"""


def tango_missing() -> str:
    """Why the Tango device cannot run here, or "" when pytango is importable."""
    try:
        import tango  # noqa: F401
    except ImportError as exc:
        return f"pytango is not installed ({exc}); pip install 'shmpipe[tango]'"
    return ""
