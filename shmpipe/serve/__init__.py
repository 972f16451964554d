"""``shmpipe serve``: one long-running process per node that owns the node's pipelines.

Recipes say which pipeline runs on which (beamtime, data source); the scheduler starts one
``shmpipe run`` child per match in its own consumer group, restarts one that dies, runs
reprocessing requests into versioned outputs, and never lets the runs together use more
workers than the node has. Everything it knows lives in SQLite, so a restarted service shows
the same history and adopts (or resumes) what was running.

Modules: ``config`` (the service TOML) and ``check`` (``--check``), ``state`` (SQLite),
``plan`` (what a child is given: versioned outputs, consumer groups, provenance), ``child``
(the wrapper a child runs in), ``runner`` (starting, adopting, watching and stopping
children), ``discovery`` (data sources and streams, asked of ASAPO), ``scheduler`` (the queue,
the worker budget, restarts), ``requests``, ``api``, ``openapi``, ``page`` and ``metrics``
(HTTP), ``registry`` (for ``shmpipe status``), ``command`` (the subcommand).
"""
