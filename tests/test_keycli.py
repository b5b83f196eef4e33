"""neo-key in process: init, show, export, import and passwd on files in a temporary directory."""

from __future__ import annotations

import io
import json
import stat
import sys
from pathlib import Path

import pytest

from neotwist.client import keycli
from neotwist.crypto import keyfile

FAST = ["--kdf-memory", "8", "--kdf-iterations", "1"]


def run(capsys: pytest.CaptureFixture[str], *argv: str, stdin: str | None = None) -> tuple[int, str, str]:
    if stdin is not None:
        sys.stdin = io.TextIOWrapper(io.BytesIO(stdin.encode()))
    try:
        code = keycli.main(list(argv))
    finally:
        sys.stdin = sys.__stdin__
    out, err = capsys.readouterr()
    return code, out, err


def test_init_show_export_import_passwd(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                         monkeypatch: pytest.MonkeyPatch) -> None:  # fmt: skip
    key = tmp_path / "k"
    monkeypatch.setenv("NEO_PASSPHRASE", "first")
    code, out, err = run(capsys, "init", "--json", "--key-file", str(key), *FAST)
    assert code == 0 and stat.S_IMODE(key.stat().st_mode) == 0o600
    assert err.startswith("neo-key: warning: 8 MiB of KDF memory is below 64 MiB") and "only for tests" in err
    info = json.loads(out)
    assert info["kdf"] == {"algorithm": "argon2id", "memory_kib": 8192, "iterations": 1, "lanes": 4}
    code, _, err = run(capsys, "init", "--key-file", str(key), *FAST)
    assert code == 1 and "already exists" in err
    code, out, _ = run(capsys, "show", "--key-file", str(key))
    assert code == 0 and info["key_id"] in out and "argon2id 8 MiB x1" in out

    exported = tmp_path / "copy.key"
    code, _, _ = run(capsys, "export", "--key-file", str(key), "-o", str(exported))
    assert code == 0 and exported.read_bytes() == key.read_bytes()
    code, out, _ = run(capsys, "export", "--key-file", str(key))
    assert json.loads(out)["key_id"] == info["key_id"]

    other = tmp_path / "elsewhere" / "k"
    code, _, _ = run(capsys, "import", str(exported), "--key-file", str(other))
    assert code == 0 and keyfile.load(other) == keyfile.load(key)
    (tmp_path / "junk").write_text("{}")
    code, _, err = run(capsys, "import", str(tmp_path / "junk"), "--key-file", str(tmp_path / "j"))
    assert code == 1 and "not a valid Neophytos key file" in err and not (tmp_path / "j").exists()

    monkeypatch.delenv("NEO_PASSPHRASE")
    code, _, err = run(capsys, "passwd", "--key-file", str(key), "--passphrase-stdin", *FAST, stdin="first\n")
    assert code == 1 and "standard input ended" in err  # no new passphrase: nothing changed
    assert keyfile.load(key) == keyfile.load(exported)
    code, _, _ = run(capsys, "passwd", "--key-file", str(key), "--passphrase-stdin", *FAST, stdin="first\nsecond\n")
    assert code == 0
    master = keyfile.unlock(keyfile.load(key), "second")
    assert keyfile.unlock(keyfile.load(exported), "first") == master  # the same key under both passphrases
    code, _, err = run(capsys, "passwd", "--key-file", str(key), "--passphrase-stdin", stdin="first\nthird\n")
    assert code == 3 and "wrong passphrase" in err


def test_usage_errors(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = run(capsys, "init", "--key-file", str(tmp_path / "k"), "--kdf-memory", "1")
    assert code == 2 and "--kdf-memory" in err
    with pytest.raises(SystemExit) as e:
        keycli.main(["frobnicate"])
    assert e.value.code == 2
    code, _, err = run(capsys, "show", "--key-file", str(tmp_path / "none"))
    assert code == 1 and "neo-key init" in err


def test_weak_kdf_settings_warn_but_work(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                         monkeypatch: pytest.MonkeyPatch) -> None:  # fmt: skip
    monkeypatch.setenv("NEO_PASSPHRASE", "pw")
    code, _, err = run(capsys, "init", "--key-file", str(tmp_path / "a"), "--kdf-memory", "64", "--kdf-iterations", "1")
    assert code == 0 and "warning: 1 KDF pass is below 2" in err
    code, _, err = run(capsys, "init", "--key-file", str(tmp_path / "b"), "--kdf-memory", "64", "--kdf-iterations", "2")
    assert code == 0 and err == ""  # at the floor: no warning
    code, _, err = run(capsys, "init", "--key-file", str(tmp_path / "c"), "--kdf-memory", "4096", "--kdf-iterations",
                       "64")  # fmt: skip
    assert code == 2 and "--kdf-memory/--kdf-iterations asks for a KDF of 4096 MiB x 64 pass(es)" in err
    assert "memory x passes at most 16 GiB" in err and not (tmp_path / "c").exists()


def test_kdf_bounds_are_the_key_files_own_with_the_scrypt_fallback(monkeypatch: pytest.MonkeyPatch) -> None:
    """Without Argon2id the key is wrapped with scrypt, which takes no passes (iterations 1): neo-key asks
    keyfile.check_bounds about what it will really write, so memory x --kdf-iterations beyond the Argon2id bound
    is not refused then (it used to be, by a copy of the bound that multiplied by the ignored passes)."""
    argv = ["init", "--kdf-memory", "512", "--kdf-iterations", "64"]
    with pytest.raises(keycli._Usage, match="at most 16 GiB"):
        keycli._kdf(keycli.build_parser().parse_args(argv))  # Argon2id: 512 MiB x 64 passes is too much
    monkeypatch.setattr(keyfile, "argon2_available", lambda: False)  # a cryptography/OpenSSL without Argon2id
    params = keycli._kdf(keycli.build_parser().parse_args(argv))
    assert (params.algorithm, params.memory_kib, params.iterations, params.lanes) == ("scrypt", 512 * 1024, 1, 1)
    keyfile.check_bounds(params)  # and a key file with these parameters is read


def test_passphrase_files_and_commands(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                       monkeypatch: pytest.MonkeyPatch) -> None:  # fmt: skip
    for name in ("NEO_PASSPHRASE", "NEO_NEW_PASSPHRASE"):
        monkeypatch.delenv(name, raising=False)
    key = tmp_path / "k"
    first, second = tmp_path / "first", tmp_path / "second"
    first.write_text("one\n")
    second.write_text("two\n")
    code, _, err = run(capsys, "init", "--key-file", str(key), "--passphrase-file", str(first), *FAST)
    assert code == 0, err
    monkeypatch.setenv("NEO_PASSPHRASE_COMMAND", f"cat {first}")
    code, out, err = run(capsys, "path", "--key-file", str(key), "docs")
    assert code == 0 and out.strip(), err
    monkeypatch.delenv("NEO_PASSPHRASE_COMMAND")
    # passwd: the current passphrase from the flag, the new one from NEO_NEW_PASSPHRASE_FILE
    monkeypatch.setenv("NEO_NEW_PASSPHRASE_FILE", str(second))
    code, _, err = run(capsys, "passwd", "--key-file", str(key), "--passphrase-file", str(first), *FAST)
    assert code == 0, err
    code, _, err = run(capsys, "path", "--key-file", str(key), "--passphrase-command", f"cat {first}", "docs")
    assert code == 3 and "wrong passphrase" in err, err
    code, _, err = run(capsys, "path", "--key-file", str(key), "--passphrase-file", str(tmp_path / "none"), "docs")
    assert code == 2 and "cannot read the --passphrase-file" in err, err
