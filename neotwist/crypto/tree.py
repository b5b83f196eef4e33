"""Whole entries encrypted for a push and listings decrypted for a pull (names + metadata together).

A handle is opened at an encrypted sub-path, and entry paths are relative to it; but every token is computed
from its parent's path *from the target root*, so the same file has the same encrypted path whichever sub-path
it was pushed or pulled through. :class:`TreeCipher` knows the handle's plaintext root and its encrypted form
and does the translation both ways.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from neotwist import paths
from neotwist.crypto import AuthenticationFailed
from neotwist.crypto.keys import MasterKey, TargetKeys
from neotwist.crypto.meta import EntryMeta, MetaSealer
from neotwist.crypto.names import PathCipher, join
from neotwist.wire import limits
from neotwist.wire.errors import NeoError
from neotwist.wire.messages import Entry, EntryKind

UNNAMED = "(unnamed)"
"""Stands in an error message for a directory whose name could not be read."""


@dataclass
class Decrypted:
    """A decrypted listing: plaintext entries (paths relative to the handle root), the server path of each
    (``remote[plain path]``) for ``get``, and one error line per entry that failed authentication."""

    entries: list[Entry] = field(default_factory=list)
    remote: dict[str, str] = field(default_factory=dict)
    errors: list[str] = field(default_factory=list)


def _bad_name(name: str) -> str | None:
    """Why a decrypted name cannot be a path component (None if it can). Only a key holder (a grantee, say) can
    seal a name, but it must still not be able to make a pull write outside its destination or a listing lie
    about paths: '/', NUL, '.', '..' and the rest that :func:`neotwist.paths.check_path` refuses are rejected,
    as they are for the names of plaintext targets."""
    if not name:
        return "is empty"
    if "/" in name:
        return "contains '/'"
    try:
        paths.check_local(name)
    except NeoError as e:
        return f"is not a valid name ({e.message})"
    return None


def _bad_path(path: str) -> str | None:
    """Why a decrypted sub-path (the root entry's record of where a push was made) is not a valid path."""
    try:
        paths.check_local(path)
    except NeoError as e:
        return f"is not a valid path ({e.message})"
    return None


class TreeCipher:
    """Encrypts entries of, and decrypts listings from, one handle of one encrypted target (thread-safe)."""

    def __init__(self, master: MasterKey, keys: TargetKeys, root: str) -> None:
        self.paths = PathCipher(master.token_key)
        self.meta = MetaSealer(keys.meta_key)
        self.root = root
        self.root_enc = self.paths.encrypt_path(root)

    # --- push ------------------------------------------------------------------------------------------

    def encrypt_entries(
        self, path: str, kind: EntryKind, mode: int, mtime_ns: int, size: int, ids: bytes, link: str, extra: bytes = b""
    ) -> list[Entry]:
        """The records of one item at plaintext ``path`` (relative to the handle root): encrypted path, blank
        visible fields, sealed name and metadata; a file with many chunks continues over several records."""
        if path:
            full = join(self.root, path)
            full_enc = self.paths.encrypt_path(full)
            rel_enc = full_enc[len(self.root_enc) + 1 :] if self.root_enc else full_enc
        else:
            full, full_enc, rel_enc = self.root, self.root_enc, ""
        meta = EntryMeta(
            mode=mode, mtime_ns=mtime_ns, size=size, link=link, path=self.root if not path else "", extra=extra
        )
        sealed = self.meta.seal(full_enc, kind, ids, full.rpartition("/")[2], meta)
        step = limits.MAX_FILE_CHUNK_IDS * limits.ID_SIZE
        if len(ids) <= step:
            return [Entry(rel_enc, kind, 0, 0, 0, ids, "", sealed)]
        return [
            Entry(rel_enc, kind, 0, 0, 0, ids[start : start + step], "", sealed if not start else b"",
                  more=start + step < len(ids))
            for start in range(0, len(ids), step)
        ]  # fmt: skip

    def encrypt_subpath(self, rel: str) -> str:
        """The server path, relative to the handle root, of plaintext ``rel`` (relative too)."""
        if not rel:
            return ""
        full = self.paths.encrypt_path(join(self.root, rel))
        return full[len(self.root_enc) + 1 :] if self.root_enc else full

    # --- pull ------------------------------------------------------------------------------------------

    def open_known(self, e: Entry, plain: str) -> Entry:
        """The plaintext of one entry whose plaintext path (relative to the handle root) is known already: the
        path must encrypt to the entry's, and its metadata must open. AuthenticationFailed otherwise."""
        full = join(self.root_enc, e.path) if e.path else self.root_enc
        if self.paths.encrypt_path(join(self.root, plain) if plain else self.root) != full:
            raise AuthenticationFailed("its encrypted path is not this one's")
        meta = self.meta.open(full, e.kind, e.chunks, e.meta)
        return Entry(plain, e.kind, meta.mode, meta.mtime_ns, meta.size, e.chunks, meta.link, meta.extra)

    def decrypt_listing(self, entries: list[Entry]) -> Decrypted:
        """Decrypt ``entries`` (continuations joined, in listing order: parents before children). An entry that
        fails authentication is left out with an error naming it as well as can be; the rest go on."""
        out = Decrypted()
        plain_of: dict[str, str] = {"": ""}  # encrypted relative path -> plaintext relative path
        root_enc = self.root_enc
        for e in entries:
            rel = e.path
            full = join(root_enc, rel) if rel else root_enc
            parent_rel = rel.rpartition("/")[0]
            parent_full = full.rpartition("/")[0]
            try:
                name = self.meta.open_name(full, e.meta)
            except AuthenticationFailed as err:
                if not rel:  # the handle root itself: most likely not where the client thinks it is
                    out.errors.append(
                        f"{self.root or '.'}: {err}; if this is a grant on a sub-path of an encrypted target, give "
                        "that sub-path with --grant-root"
                    )
                    continue
                out.errors.append(f"{join(plain_of.get(parent_rel, UNNAMED), UNNAMED)}: {err}; skipped")
                continue
            bad = _bad_name(name) if rel else None
            if bad is not None:
                out.errors.append(
                    f"{join(plain_of.get(parent_rel, UNNAMED), UNNAMED)}: its decrypted name {name!r} {bad} "
                    "(forged by a key holder or damaged); skipped"
                )
                continue
            if not rel:  # the handle root: the name is the last component of the plaintext root
                shown = self.root or "."
                plain: str | None = ""
            else:
                parent_plain = plain_of.get(parent_rel)
                shown = join(parent_plain if parent_plain is not None else UNNAMED, name)
                plain = None
                if self.paths.encrypt_name(parent_full, name) != rel.rpartition("/")[2]:
                    out.errors.append(f"{shown}: its name does not match its encrypted path (modified); skipped")
                    continue
                if parent_plain is not None:
                    plain = plain_of[rel] = join(parent_plain, name)
            try:
                meta = self.meta.open(full, e.kind, e.chunks, e.meta)
            except AuthenticationFailed as err:
                out.errors.append(f"{shown}: {err}; the server's copy of it cannot be trusted, skipped")
                continue
            if meta.path and self.paths.encrypt_path(meta.path) == full:
                bad = _bad_path(meta.path)
                if bad is not None:
                    out.errors.append(f"{shown}: its recorded path {meta.path!r} {bad} (forged or damaged); skipped")
                    continue
                plain = self._learn_path(plain_of, rel, meta.path)
            if plain is None:
                out.errors.append(f"{shown}: its directory could not be named; skipped")
                continue
            out.entries.append(
                Entry(plain, e.kind, meta.mode, meta.mtime_ns, meta.size, e.chunks, meta.link, meta.extra)
            )
            out.remote[plain] = rel
        return out

    def _learn_path(self, plain_of: dict[str, str], rel: str, path: str) -> str | None:
        """The root entry of a sub-path push names its plaintext path from the target root: remember the
        directories above it (that push did not list them), so they and their children can be named. Returns
        the entry's plaintext path relative to the handle root."""
        if not rel:
            self.root = path
            return ""
        root = self.root
        if root and not path.startswith(root + "/"):
            return None
        plain_parts = (path[len(root) + 1 :] if root else path).split("/")
        enc_parts = rel.split("/")
        if len(plain_parts) != len(enc_parts):
            return None
        for n in range(1, len(enc_parts) + 1):
            plain_of["/".join(enc_parts[:n])] = "/".join(plain_parts[:n])
        return plain_of[rel]
