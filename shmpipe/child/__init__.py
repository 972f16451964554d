"""The contract of every process the supervisor forks: what it inherits (``plumbing``), how it
starts and stops (``roles``) and what its exit status means (``exits``).

It sits below ``shmpipe.observe``, the side processes and the engine, which all use it, and
above ``shmpipe.shm`` and ``shmpipe.config``.
"""
