"""How loud the SSH machinery is in the server log.

Conch logs every key exchange, cipher choice, auth attempt and channel request (debug), plus a line per
connection about the missing moduli file and per channel open and close (info). An operator reading the log
wants logins, failed logins, commits, prunes and errors, which Neophytos logs with its own loggers. So the conch
classes the server subclasses log through :data:`conch_log`, filtered at :data:`conch_levels` (warnings and
errors by default; ``twistd neophytos --ssh-log-level debug`` shows everything again).
"""

from __future__ import annotations

from typing import Any, cast

from twisted.logger import FilteringLogObserver, Logger, LogLevel, LogLevelFilterPredicate, globalLogPublisher

LEVELS = {"debug": LogLevel.debug, "info": LogLevel.info, "warn": LogLevel.warn, "error": LogLevel.error}
"""The ``--ssh-log-level`` choices."""

conch_levels = LogLevelFilterPredicate(defaultLogLevel=LogLevel.warn)
"""The level below which the SSH protocol's own events are dropped."""

conch_log = Logger(observer=cast(Any, FilteringLogObserver(cast(Any, globalLogPublisher), [cast(Any, conch_levels)])))
"""The logger for the ``_log`` attribute of the conch subclasses (a class attribute: each instance logs under
its own class's namespace, through this filter)."""


def set_ssh_log_level(name: str) -> None:
    """Let SSH protocol events at ``name`` (debug, info, warn, error) and above into the log."""
    conch_levels.defaultLogLevel = LEVELS[name]
