"""The built-in plug-ins: sources, sinks and kernels, written against ``shmpipe.api`` only."""
