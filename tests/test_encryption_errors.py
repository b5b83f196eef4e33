"""Server errors on an encrypted handle name paths by their tokens; the client puts them back in plaintext in one
place (Crypt.plain_errors, around every request on the handle). Real keys, real tree encryption, error messages
as the server words them (``client_path``: the opened sub-path joined with the request's path)."""

from __future__ import annotations

import os

import pytest

from neotwist.client.encryption import Crypt, plain_errors
from neotwist.client.encryption import place as _place
from neotwist.crypto.keys import MasterKey
from neotwist.crypto.tree import TreeCipher
from neotwist.wire.errors import ErrorCode, RemoteError
from neotwist.wire.messages import Entry


def _crypt(grant_root: str, subpath: str) -> tuple[Crypt, TreeCipher, str]:
    master = MasterKey(os.urandom(32))
    _record, keys = master.new_target()
    root, opened_enc = _place(master, grant_root, subpath)
    crypt = Crypt.make(master, keys, root, (subpath, opened_enc))
    return crypt, TreeCipher(master, keys, root), opened_enc


def _listing(tree: TreeCipher, *files: str) -> list[Entry]:
    out = tree.encrypt_entries("", "d", 0o755, 0, 0, b"", "")
    for path in files:
        out += tree.encrypt_entries(path, "f" if "." in path else "d", 0o644, 0, 1, b"", "")
    return out


@pytest.mark.parametrize("grant_root", ["", "granted/here"])
def test_paths_the_handle_named_come_back_in_plaintext(grant_root: str) -> None:
    crypt, tree, opened_enc = _crypt(grant_root, "docs")
    crypt.decrypt_listing(_listing(tree, "a", "a/b.txt"))
    deep = tree.encrypt_subpath("a/b.txt")
    asked = crypt.encrypt_subpath("x/never-listed")
    unknown = tree.encrypt_subpath("not/named/by/this/handle")
    cases = {
        f"no file '{opened_enc}/{deep}' in snapshot 3": "no file 'docs/a/b.txt' in snapshot 3",
        f"{opened_enc}/{deep}: chunk 00ff is damaged": "docs/a/b.txt: chunk 00ff is damaged",
        f"no stored version of '{opened_enc}/{asked}'": "no stored version of 'docs/x/never-listed'",
        f"nothing at '{opened_enc}' in snapshot 2": "nothing at 'docs' in snapshot 2",
        # a path the handle never named stays as the server wrote it (nothing is guessed)
        f"nothing at '{opened_enc}/{unknown}'": f"nothing at '{opened_enc}/{unknown}'",
        "no snapshot 9 in 'papers'": "no snapshot 9 in 'papers'",
    }
    for message, expected in cases.items():
        assert crypt.plain_error(RemoteError(ErrorCode.NO_SUCH_PATH, message)).message == expected
    # the handle's listed paths are found however many listings there were
    crypt.decrypt_listing(_listing(tree, "c.txt"))
    named = f"'{opened_enc}/{tree.encrypt_subpath('c.txt')}' and '{opened_enc}/{deep}'"
    assert crypt.plain_error(RemoteError(ErrorCode.CONFLICT, named)).message == "'docs/c.txt' and 'docs/a/b.txt'"


def test_a_handle_at_the_root_names_paths_from_it() -> None:
    crypt, tree, opened_enc = _crypt("", "")
    assert opened_enc == ""
    crypt.decrypt_listing(_listing(tree, "a", "a/b.txt"))
    message = f"no file '{tree.encrypt_subpath('a/b.txt')}' in snapshot 1"
    assert crypt.plain_error(RemoteError(ErrorCode.NO_SUCH_PATH, message)).message == "no file 'a/b.txt' in snapshot 1"


def test_plain_errors_covers_every_request_made_inside() -> None:
    crypt, tree, opened_enc = _crypt("", "docs")
    crypt.decrypt_listing(_listing(tree, "a.txt"))
    with pytest.raises(RemoteError) as caught, crypt.plain_errors():
        raise RemoteError(ErrorCode.NO_SUCH_PATH, f"no file '{opened_enc}/{tree.encrypt_subpath('a.txt')}'")
    assert caught.value.code == ErrorCode.NO_SUCH_PATH and caught.value.message == "no file 'docs/a.txt'"
    with pytest.raises(ValueError, match="untouched"), crypt.plain_errors():
        raise ValueError("untouched")
    with pytest.raises(RemoteError, match="as it was"), plain_errors(None):  # a plaintext handle: nothing to do
        raise RemoteError(ErrorCode.NO_SUCH_PATH, "as it was")
