"""Whole entries encrypted for a push and listings decrypted for a pull (names + metadata together).

A handle is opened at an encrypted sub-path, and entry paths are relative to it; but every name is encrypted
with its parent's path *from the target root* as associated data, so the same file gets the same encrypted
path whichever sub-path it was pushed or pulled through. :class:`TreeCipher` knows the handle's plaintext root
and its encrypted form and does the translation both ways.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import blake3

from neotwist.crypto import AuthenticationFailed
from neotwist.crypto.keys import MasterKey, TargetKeys
from neotwist.crypto.meta import EntryMeta, MetaSealer
from neotwist.crypto.names import PathCipher, is_token, join
from neotwist.wire import limits
from neotwist.wire.messages import Entry, EntryKind


def ids_hash(ids: bytes) -> bytes:
    """What binds a file's metadata to its chunk list (the ids are already keyed)."""
    return blake3.blake3(ids).digest()


@dataclass
class Decrypted:
    """A decrypted listing: plaintext entries (paths relative to the handle root), the server path of each
    (``remote[plain path]``) for ``get``, and one error line per entry that failed authentication."""

    entries: list[Entry] = field(default_factory=list)
    remote: dict[str, str] = field(default_factory=dict)
    errors: list[str] = field(default_factory=list)


class TreeCipher:
    """Encrypts entries of, and decrypts listings from, one handle of one encrypted target (thread-safe)."""

    def __init__(self, master: MasterKey, keys: TargetKeys, root: str) -> None:
        self.paths = PathCipher(master.name_key, master.token_key)
        self.meta = MetaSealer(keys.meta_key)
        self.root = root
        self.root_enc = self.paths.encrypt_path(root)
        self._root_has_token = any(is_token(c) for c in self.root_enc.split("/"))

    # --- push ------------------------------------------------------------------------------------------

    def encrypt_entries(
        self, path: str, kind: EntryKind, mode: int, mtime_ns: int, size: int, ids: bytes, link: str
    ) -> list[Entry]:
        """The records of one item at plaintext ``path`` (relative to the handle root): encrypted path, blank
        visible fields, sealed metadata; a file with many chunks continues over several records."""
        if path:
            full_enc = self.paths.encrypt_path(join(self.root, path))
            rel_enc = full_enc[len(self.root_enc) + 1 :] if self.root_enc else full_enc
        else:
            full_enc, rel_enc = self.root_enc, ""
        last = full_enc.rpartition("/")[2]
        meta = EntryMeta(
            mode=mode,
            mtime_ns=mtime_ns,
            size=size,
            link=link,
            ids_hash=ids_hash(ids) if kind == "f" else b"",
            name=(path or self.root).rpartition("/")[2] if is_token(last) else "",
            path=self.root if not path and self._root_has_token else "",
        )
        sealed = self.meta.seal(full_enc, kind, meta)
        step = limits.MAX_FILE_CHUNK_IDS * limits.ID_SIZE
        if len(ids) <= step:
            return [Entry(rel_enc, kind, 0, 0, 0, ids, "", sealed)]
        out = []
        for start in range(0, len(ids), step):
            out.append(
                Entry(
                    rel_enc, kind, 0, 0, 0, ids[start : start + step], "", sealed if not start else b"",
                    more=start + step < len(ids),
                )
            )  # fmt: skip
        return out

    # --- pull ------------------------------------------------------------------------------------------

    def decrypt_listing(self, entries: list[Entry]) -> Decrypted:
        """Decrypt ``entries`` (continuations joined, in listing order: parents before children). An entry that
        fails authentication is left out with an error naming it as well as can be; the rest go on."""
        out = Decrypted()
        plain_of: dict[str, str] = {"": ""}
        root_enc = self.root_enc
        for e in entries:
            rel = e.path
            full = join(root_enc, rel) if rel else root_enc
            parent_rel, _, component = rel.rpartition("/")
            parent_full = full.rpartition("/")[0] if full else ""
            parent_plain = plain_of.get(parent_rel) if rel else ""
            shown = self._best_name(parent_rel, component, parent_plain, parent_full) if rel else (self.root or ".")
            try:
                meta = self.meta.open(full, e.kind, e.meta)
            except AuthenticationFailed as err:
                out.errors.append(f"{shown}: {err}; the server's copy of it cannot be trusted")
                self._remember_name(plain_of, rel, parent_plain, parent_full, component, None)
                continue
            if meta.path and self.paths.encrypt_path(meta.path) == full:
                parent_plain = self._learn_path(plain_of, rel, meta.path)
            plain = self._remember_name(plain_of, rel, parent_plain, parent_full, component, meta.name or None)
            if plain is None:
                out.errors.append(f"{shown}: its encrypted name failed authentication; skipped")
                continue
            if e.kind == "f" and meta.ids_hash != ids_hash(e.chunks):
                out.errors.append(f"{plain or '.'}: its chunk list does not match its metadata (modified); skipped")
                continue
            out.entries.append(Entry(plain, e.kind, meta.mode, meta.mtime_ns, meta.size, e.chunks, meta.link))
            out.remote[plain] = rel
        return out

    def _learn_path(self, plain_of: dict[str, str], rel: str, path: str) -> str | None:
        """An entry's metadata names its plaintext path from the target root (the root of a sub-path push whose
        sub-path holds long names): remember its ancestors, so they and their children can be named. Returns
        the plaintext of the entry's parent, relative to the handle root."""
        if not rel:
            self.root = path
            return None
        root = self.root
        if root and not path.startswith(root + "/"):
            return None
        plain_parts = (path[len(root) + 1 :] if root else path).split("/")
        enc_parts = rel.split("/")
        if len(plain_parts) != len(enc_parts):
            return None
        for n in range(1, len(enc_parts)):
            plain_of["/".join(enc_parts[:n])] = "/".join(plain_parts[:n])
        return "/".join(plain_parts[:-1])

    def _remember_name(
        self,
        plain_of: dict[str, str],
        rel: str,
        parent_plain: str | None,
        parent_full: str,
        component: str,
        long_name: str | None,
    ) -> str | None:
        """The plaintext relative path of ``rel`` (None if it cannot be named), remembered for its children."""
        if not rel:
            return ""
        if parent_plain is None:
            parent_plain = self._decrypt_rel(rel.rpartition("/")[0])
            if parent_plain is None:
                return None
        try:
            name = self.paths.decrypt_name(parent_full, component)
        except AuthenticationFailed:
            return None
        if name is None:
            if long_name is None or not self.paths.token_matches(parent_full, component, long_name):
                return None
            name = long_name
        plain = join(parent_plain, name)
        plain_of[rel] = plain
        return plain

    def _decrypt_rel(self, rel: str) -> str | None:
        """A relative encrypted path whose parents were not listed, component by component."""
        parent = self.root_enc
        names = []
        for component in rel.split("/") if rel else []:
            try:
                name = self.paths.decrypt_name(parent, component)
            except AuthenticationFailed:
                return None
            if name is None:
                return None
            names.append(name)
            parent = join(parent, component)
        return "/".join(names)

    def _best_name(self, parent_rel: str, component: str, parent_plain: str | None, parent_full: str) -> str:
        """The plaintext path for an error message, or the encrypted one where it cannot be decrypted."""
        if parent_plain is None:
            parent_plain = self._decrypt_rel(parent_rel)
        try:
            name = self.paths.decrypt_name(parent_full, component)
        except AuthenticationFailed:
            name = None
        if parent_plain is None or name is None:
            return f"(encrypted name) {join(parent_rel, component)}"
        return join(parent_plain, name)

    def encrypt_subpath(self, rel: str) -> str:
        """The server path, relative to the handle root, of plaintext ``rel`` (relative too)."""
        if not rel:
            return ""
        full = self.paths.encrypt_path(join(self.root, rel))
        return full[len(self.root_enc) + 1 :] if self.root_enc else full
