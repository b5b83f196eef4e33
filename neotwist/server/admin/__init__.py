"""``neo-admin``: manage the server's accounts, SSH keys, sub-accounts, grants, quotas and targets, and check its
repository, also while the server runs.

It works on the same SQLite account store as the server (``DATA/accounts.sqlite``); the server reads it on
every login and every open, so changes take effect at once. ``target`` and ``account show`` also read the
repository (``DATA/repo``); ``neo-admin check`` reads it without writing anything (``--repair`` writes only the
index rows that mark damaged chunks). Exit status: 0 done (check: nothing damaged or lost), 1 the operation
failed or check found damage (one line on stderr says why and what to do), 2 usage error.

Modules: :mod:`.cli` (the entry point, the dispatch, account and key commands, ``init``), :mod:`.parser` (the
command line), :mod:`.check`, :mod:`.sharing` (quotas, grants, targets), :mod:`.common` (what they share).
"""

from neotwist.server.admin.cli import main, run

__all__ = ["main", "run"]
