"""Rights and access: what an account may do with a (target, sub-path), decided in one place.

A grant gives an account (the grantee) one :class:`Right` on a sub-path of another account's target. The grantee
names it by the grant's name; the grant's sub-path becomes the root of every handle it opens there. Accounts hold
:data:`Right.FULL` on their own targets. Sub-accounts (accounts created by, and managed by, another account) have
no targets of their own: everything they reach is granted.

Sans-IO: :func:`resolve` takes the looked-up grant and own-target facts and returns the :class:`Access`; the
session does the lookups in a worker thread.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

from neotwist import paths
from neotwist.wire.errors import ErrorCode, NeoError
from neotwist.wire.messages import RIGHTS_TEXT

__all__ = ["RIGHTS_TEXT", "Access", "GrantView", "Right", "resolve"]


class Right(enum.IntEnum):
    """What an account may do with a (target, sub-path). Each right includes the ones below it."""

    READ = 1  # list and pull, check
    APPEND = 2  # read, and push new snapshots (never delete files from history, prune or remove the target)
    WRITE = 3  # append, and push --delete
    FULL = 4  # write, and prune and remove the target

    @property
    def label(self) -> str:
        """The spelling used on command lines, in JSON and in error messages: read, append, write, full."""
        return self.name.lower()

    @classmethod
    def parse(cls, text: str) -> Right:
        """``read``, ``append``, ``write`` or ``full`` (any case); ValueError naming the choices otherwise."""
        try:
            return cls[text.strip().upper()]
        except KeyError:
            raise ValueError(f"unknown right {text!r}: use read, append, write or full") from None


@dataclass(frozen=True)
class Access:
    """The outcome of access resolution: whose target, which sub-path is the handle's root, and the right held.

    ``name`` is the name the client used (a grant's name or its own target's name) and is what error messages
    say. ``grant_root`` is the grant's sub-path ("" for the account's own targets and whole-target grants);
    ``granted`` tells a grant from the account's own target.
    """

    owner_id: int
    target: str
    root: str
    right: Right
    name: str = ""
    grant_root: str = ""
    granted: bool = False

    @property
    def confined(self) -> bool:
        """True when the handle may see only part of the target (a grant on a sub-path): replies must then say
        nothing about the rest (other paths, their snapshots, chunks or sizes)."""
        return self.granted and self.grant_root != ""

    def relative(self, path: str) -> str:
        """A target path as the client sees it (relative to the grant root); for error messages."""
        if self.grant_root and paths.is_within(path, self.grant_root):
            return paths.relative_to(path, self.grant_root)
        return path

    def require(self, needed: Right, what: str, account: str) -> None:
        """Raise PERMISSION_DENIED naming the missing right unless this access holds ``needed``."""
        if self.right < needed:
            raise NeoError(
                ErrorCode.PERMISSION_DENIED,
                f"{what} needs the {needed.label} right on {self.name or self.target}; "
                f"{account} has {self.right.label}",
            )


@dataclass(frozen=True)
class GrantView:
    """What :func:`resolve` needs of a grant: the owner, the owner's target and sub-path, and the right."""

    owner_id: int
    target: str
    path: str
    right: Right


def resolve(
    account_id: int, account_name: str, is_sub_account: bool, name: str, path: str, grant: GrantView | None
) -> Access:
    """Where an account lands when it names target ``name`` and sub-path ``path``.

    ``grant`` is the account's grant called ``name``, if any: a grant shadows an own target of the same name
    (refused at grant time anyway). Without one, the account reaches its own target with FULL rights, unless it
    is a sub-account, which has no targets of its own (NO_SUCH_TARGET). Raises BAD_NAME / BAD_PATH first.
    """
    paths.check_name(name, "target name")
    paths.check_path(path)
    if grant is not None:
        return Access(
            owner_id=grant.owner_id,
            target=grant.target,
            root=paths.join(grant.path, path),
            right=grant.right,
            name=name,
            grant_root=grant.path,
            granted=True,
        )
    if is_sub_account:
        raise NeoError(
            ErrorCode.NO_SUCH_TARGET,
            f"{account_name} has no grant called {name!r} (a sub-account has no targets of its own; "
            "neo-ls lists what it can reach)",
        )
    return Access(owner_id=account_id, target=name, root=path, right=Right.FULL, name=name)
