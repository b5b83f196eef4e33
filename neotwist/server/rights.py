"""The rights an account can hold on a (target, sub-path): what each operation needs is decided against these."""

from __future__ import annotations

import enum


class Right(enum.IntEnum):
    """What an account may do with a (target, sub-path). Each right includes the ones below it."""

    READ = 1  # list and pull
    APPEND = 2  # read, and push new snapshots (never delete from history)
    WRITE = 3  # append, and push --delete
    FULL = 4  # write, and prune and remove the target
