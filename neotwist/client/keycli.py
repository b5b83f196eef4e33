"""neo-key: create, show, export, import and re-protect the key of encrypted targets.

The key never leaves the client: the server only ever sees a key id and a key-check record. The key file is
protected by a passphrase through Argon2id (see :mod:`neotwist.crypto.keyfile`); what ``export`` prints is that
protected file, so moving it to another machine still needs the passphrase there.

Exit codes: 0 done; 1 failed (one line on stderr says why); 2 usage error; 3 wrong passphrase.
"""

from __future__ import annotations

import argparse
import getpass
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from neotwist.client.clibase import (
    add_version,
)
from neotwist.client.credentials import SecretUnavailable, configured_secret
from neotwist.client.pins import PinFileError
from neotwist.client.runner import entry_point
from neotwist.crypto import CryptoError, KeyFileError, WrongPassphrase, keyfile
from neotwist.display import write_json

EXIT_OK, EXIT_FAILED, EXIT_USAGE, EXIT_AUTH = 0, 1, 2, 3

_EPILOG = """\
examples:
  neo-key init
      create a key (asks for a passphrase twice) in the default place; neo-push --encrypt uses it
  neo-key export > neophytos-key.txt
      print the passphrase-protected key file, to keep a copy or carry it to another machine
  neo-key import neophytos-key.txt
      install a key exported elsewhere (the passphrase stays the one it was exported with)
  neo-key passwd
      change the passphrase (the key, and so every encrypted target, stays the same); copies exported
      before still open with the old passphrase: destroy them if it leaked
  printf '%s\\n' "$OLD" "$NEW" | neo-key passwd --passphrase-stdin
      the same without a terminal: old passphrase on line 1, new on line 2
  neo-key forget alice@nas/papers
      after deliberately removing (and maybe re-creating) an encrypted target elsewhere: drop this client's
      pin of it, so the server's new answer about its encryption is accepted (neo-target remove does this too)
  neo-share alice@nas grant "papers/$(neo-key path 2024)" --to alice.bob --right read --as p2024
      grant a sub-path of an encrypted target (the server knows it only encrypted); alice.bob, holding the
      key, then uses: neo-pull --grant-root 2024 alice.bob@nas/p2024 ./2024

The passphrase comes from a prompt, --passphrase-stdin (first line of standard input) or NEO_PASSPHRASE
(NEO_NEW_PASSPHRASE for the new one of passwd). Losing both the key file and every exported copy, or the
passphrase, loses the data of every target encrypted with it: nobody can recover it, not even the server.
"""


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> Any:
        self.print_usage(sys.stderr)
        sys.stderr.write(f"{self.prog}: error: {message}\n")
        raise SystemExit(EXIT_USAGE)


def build_parser() -> argparse.ArgumentParser:
    p = _Parser(
        prog="neo-key",
        description="Manage the key that encrypts targets on the client (the server never sees it).",
        epilog=_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_version(p)
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND", parser_class=_Parser)

    def common(q: argparse.ArgumentParser, passphrase: bool = True) -> None:
        q.add_argument("--key-file", type=Path, metavar="FILE",
                       help=f"the key file (default {keyfile.default_path()})")
        if passphrase:
            q.add_argument("--passphrase-stdin", action="store_true",
                           help="read the passphrase from standard input (passwd: old, then new, one per line)")
            q.add_argument("--passphrase-file", type=Path, metavar="FILE",
                           help="the passphrase (passwd: the current one) from the first line of FILE (also "
                           "NEO_PASSPHRASE_FILE; passwd's new one: NEO_NEW_PASSPHRASE_FILE)")
            q.add_argument("--passphrase-command", metavar="CMD",
                           help="run CMD (no shell): its first output line is the passphrase (also "
                           "NEO_PASSPHRASE_COMMAND; passwd's new one: NEO_NEW_PASSPHRASE_COMMAND)")  # fmt: skip
        q.add_argument("--json", action="store_true", help="print one JSON object on stdout")

    def kdf(q: argparse.ArgumentParser) -> None:
        q.add_argument("--kdf-memory", type=int, default=keyfile.DEFAULT_MEMORY_KIB // 1024, metavar="MIB",
                       help=f"KDF memory in MiB (default {keyfile.DEFAULT_MEMORY_KIB // 1024}; at least "
                       f"{keyfile.MIN_MEMORY_KIB // 1024})")
        q.add_argument("--kdf-iterations", type=int, default=keyfile.DEFAULT_ITERATIONS, metavar="N",
                       help=f"KDF passes (default {keyfile.DEFAULT_ITERATIONS})")

    q = sub.add_parser("init", help="create a new key file protected by a passphrase")
    common(q)
    kdf(q)
    q = sub.add_parser("show", help="print where the key file is, its key id and KDF (no passphrase needed)")
    common(q, passphrase=False)
    q = sub.add_parser("export", help="print the protected key file (or write it to --output)")
    common(q, passphrase=False)
    q.add_argument("-o", "--output", type=Path, metavar="FILE", help="write here (mode 0600) instead of stdout")
    q = sub.add_parser("import", help="install a key file exported with 'neo-key export'")
    common(q, passphrase=False)
    q.add_argument("source", metavar="FILE", help="the exported key file, or - for standard input")
    q.add_argument("--force", action="store_true", help="replace a key file holding another key")
    q = sub.add_parser("passwd", help="change the key file's passphrase (the key itself stays; copies exported "
                       "before keep the old passphrase)")
    common(q)
    kdf(q)
    q = sub.add_parser("path", help="print the encrypted form of a sub-path of a target (for neo-share grant)")
    common(q)
    q.add_argument("subpath", metavar="SUBPATH", help="the sub-path in plaintext, from the target's root")
    q = sub.add_parser("forget", help="forget that a target was seen encrypted (after deliberately removing it)")
    q.add_argument("remote", metavar="REMOTE", help="[ssh://|tls://]USER@HOST[:PORT]/TARGET, as given to neo-push")
    q.add_argument("--json", action="store_true", help="print one JSON object on stdout")
    return p


class _Stdin:
    """Lines of standard input, read only when asked for (passwd takes two)."""

    def line(self, what: str) -> str:
        text = sys.stdin.readline()
        if not text:
            raise KeyFileError(f"standard input ended before the {what}")
        return text.rstrip("\r\n")


def _prompt(question: str, confirm: bool) -> str | None:
    if not sys.stdin.isatty():
        return None
    try:
        first = getpass.getpass(question)
        if confirm and getpass.getpass("Again: ") != first:
            raise KeyFileError("the two passphrases differ; nothing was changed")
        return first
    except (EOFError, KeyboardInterrupt):
        return None


def _passphrase(args: argparse.Namespace, stdin: _Stdin, env: str, question: str, confirm: bool) -> str:
    if args.passphrase_stdin:
        return stdin.line(question.rstrip(": ").lower())
    # the flags name the passphrase the key file has now; passwd's new one comes from NEO_NEW_PASSPHRASE*
    configured = configured_secret(args if env == "NEO_PASSPHRASE" else None, "passphrase", env)
    if configured is not None:
        given = configured()
        if given is None:
            raise KeyFileError(f"no passphrase: the command of {env}_COMMAND or --passphrase-command failed")
        return given
    answer = _prompt(question, confirm)
    if answer is None:
        raise KeyFileError(f"no passphrase: use --passphrase-stdin or {env}, or run on a terminal")
    return answer


def _kdf(args: argparse.Namespace) -> keyfile.KdfParams:
    memory = args.kdf_memory * 1024
    if not keyfile.MIN_MEMORY_KIB <= memory <= keyfile.MAX_MEMORY_KIB:
        raise _Usage(f"--kdf-memory must be {keyfile.MIN_MEMORY_KIB // 1024}..{keyfile.MAX_MEMORY_KIB // 1024} MiB")
    if not 1 <= args.kdf_iterations <= keyfile.MAX_ITERATIONS:
        raise _Usage(f"--kdf-iterations must be 1..{keyfile.MAX_ITERATIONS}")
    params = keyfile.default_params(memory, args.kdf_iterations)
    try:
        # the bound a key file is read with, on what is really written (scrypt, without Argon2id, takes no passes)
        keyfile.check_bounds(
            params, "--kdf-memory/--kdf-iterations", "a key file costlier than that is refused when read: ask for less"
        )
    except KeyFileError as e:
        raise _Usage(str(e)) from None
    why = keyfile.weak(params)
    if why is not None:
        sys.stderr.write(
            f"neo-key: warning: {why}: a leaked key file is cheap to brute-force; use such settings only for tests "
            f"(the default is {keyfile.DEFAULT_MEMORY_KIB // 1024} MiB x {keyfile.DEFAULT_ITERATIONS} passes)\n"
        )
    return params


class _Usage(Exception):
    pass


def _describe(path: Path, kf: keyfile.KeyFile) -> dict[str, Any]:
    return {
        "key_file": str(path),
        "key_id": kf.key_id,
        "kdf": {
            "algorithm": kf.kdf.algorithm,
            "memory_kib": kf.kdf.memory_kib,
            "iterations": kf.kdf.iterations,
            "lanes": kf.kdf.lanes,
        },
        "cipher": kf.cipher,
    }


def _run(args: argparse.Namespace, out: Callable[[dict[str, Any], str], None]) -> int:
    if args.command == "forget":
        return _forget(args, out)
    path: Path = args.key_file or keyfile.default_path()
    stdin = _Stdin()
    if args.command == "init":
        params = _kdf(args)
        if path.exists():
            raise KeyFileError(f"{path} already exists; it was left alone (see 'neo-key show', or give --key-file)")
        passphrase = _passphrase(args, stdin, "NEO_PASSPHRASE", "New passphrase: ", confirm=True)
        kf, _master = keyfile.create(passphrase, params)
        keyfile.save(path, kf)
        out(
            _describe(path, kf),
            f"created key {kf.key_id} in {path}\nkeep a copy somewhere else ('neo-key export'): without the key "
            "file and its passphrase the encrypted data cannot be read by anyone",
        )
    elif args.command == "show":
        kf = keyfile.load(path)
        info = _describe(path, kf)
        out(info, f"{path}: key {kf.key_id}, {kf.kdf.algorithm} {kf.kdf.memory_kib // 1024} MiB "
                  f"x{kf.kdf.iterations} ({kf.kdf.lanes} lanes), {kf.cipher}")  # fmt: skip
    elif args.command == "export":
        kf = keyfile.load(path)
        if args.output is None:
            sys.stdout.buffer.write(keyfile.dumps(kf))
            sys.stdout.flush()
            return EXIT_OK
        keyfile.save(args.output, kf)
        out({**_describe(args.output, kf), "exported_from": str(path)}, f"wrote key {kf.key_id} to {args.output}")
    elif args.command == "import":
        if args.source == "-":
            data = sys.stdin.buffer.read(keyfile.MAX_KEY_FILE + 1)
            where = "standard input"
        else:
            where = args.source
            try:
                with open(args.source, "rb") as f:
                    data = f.read(keyfile.MAX_KEY_FILE + 1)
            except OSError as e:
                raise KeyFileError(f"cannot read {args.source}: {e.strerror}") from None
        kf = keyfile.loads(data, where)
        if path.exists() and not args.force:
            try:
                current: keyfile.KeyFile | None = keyfile.load(path)
            except KeyFileError:
                current = None
            if current is not None and current.key_id == kf.key_id:
                out({**_describe(path, current), "unchanged": True}, f"{path} already holds key {kf.key_id}")
                return EXIT_OK
            raise KeyFileError(
                f"{path} already holds another key; it was left alone (--force replaces it: export it first, "
                "or the targets encrypted with it become unreadable)"
            )
        keyfile.save(path, kf, replace=args.force)
        out(_describe(path, kf), f"imported key {kf.key_id} into {path}")
    elif args.command == "path":
        from neotwist import paths
        from neotwist.crypto.keys import MasterKey
        from neotwist.crypto.names import PathCipher
        from neotwist.wire.errors import NeoError

        subpath = args.subpath.strip("/")
        try:
            paths.check_local(subpath)
        except NeoError as e:
            raise _Usage(f"bad SUBPATH {args.subpath!r}: {e.message}") from None
        kf = keyfile.load(path)
        passphrase = _passphrase(args, stdin, "NEO_PASSPHRASE", "Passphrase: ", confirm=False)
        encrypted = PathCipher(MasterKey(keyfile.unlock(kf, passphrase, str(path))).token_key).encrypt_path(subpath)
        out({"key_id": kf.key_id, "path": subpath, "encrypted": encrypted}, encrypted)
    elif args.command == "passwd":
        params = _kdf(args)
        kf = keyfile.load(path)
        old = _passphrase(args, stdin, "NEO_PASSPHRASE", "Current passphrase: ", confirm=False)
        master = keyfile.unlock(kf, old, str(path))
        new = _passphrase(args, stdin, "NEO_NEW_PASSPHRASE", "New passphrase: ", confirm=True)
        rewrapped = keyfile.wrap(master, new, params)
        keyfile.save(path, rewrapped, replace=True)
        out(_describe(path, rewrapped), f"changed the passphrase of {path} (key {kf.key_id})")
    return EXIT_OK


def _forget(args: argparse.Namespace, out: Callable[[dict[str, Any], str], None]) -> int:
    """Drop a target's encryption pin: the one way to accept that a target this client saw encrypted is now
    plaintext or under another key (a deliberate removal and re-creation), short of editing the file."""
    from neotwist.client.pins import TargetPin
    from neotwist.client.remote import UsageError, parse_remote

    try:
        remote = parse_remote(args.remote)
    except UsageError as e:
        raise _Usage(str(e)) from None
    if remote.path:
        raise _Usage(f"give the target itself, without a sub-path: {remote.user}@{remote.address}/{remote.target}")
    pin = TargetPin.for_remote(remote)
    gone = pin.forget()
    info = {"remote": pin.remote, "pins_file": str(pin.file.path), "forgotten": gone is not None,
            "key_id": gone.key_id if gone is not None else None}  # fmt: skip
    if gone is None:
        out(info, f"{pin.remote} was not pinned in {pin.file.path}; nothing changed")
    else:
        out(info, f"forgot that {pin.remote} is encrypted with key {gone.key_id}; the next push or pull believes "
                  "what the server says about it (and pins it again if it is encrypted)")  # fmt: skip
    return EXIT_OK


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)

    def out(info: dict[str, Any], text: str) -> None:
        if args.json:
            write_json(info)
        else:
            sys.stdout.write(text + "\n")

    try:
        return _run(args, out)
    except (_Usage, SecretUnavailable) as e:
        parser.print_usage(sys.stderr)
        sys.stderr.write(f"neo-key: error: {e}\n")
        return EXIT_USAGE
    except WrongPassphrase as e:
        sys.stderr.write(f"neo-key: {e}\n")
        return EXIT_AUTH
    except (CryptoError, OSError, PinFileError) as e:
        sys.stderr.write(f"neo-key: {e}\n")
        return EXIT_FAILED


main_entry = entry_point("neo-key", main)
