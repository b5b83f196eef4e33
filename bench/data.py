"""The data every tool is given: a copy of a real tree, generated trees, a big file, and the edits made to them.

Everything is made in the work directory and is deterministic for a seed, so two runs push the same bytes.
The sources are never edited in place: the real tree is copied first. A :class:`DataSet` carries a version
number that every edit bumps, so a scenario can tell whether a tool's server copy is current.
"""

from __future__ import annotations

import hashlib
import os
import random
import shutil
import stat
import subprocess
import sysconfig
import time
from dataclasses import dataclass, field
from pathlib import Path

PIECE = 16 * 1024 * 1024
TEXT_TABLE = bytes(b"etaoinshrdlucmfwypvbgkjqxz ETAOINS\n.,_()=:0123456789"[i % 52] for i in range(256))
"""Maps random bytes onto 52 text characters: text-like data that compresses about 1.4x and never dedups."""

RACY_WAIT = 1.1
"""Seconds to wait after writing data before a timed push: Neophytos' files cache (and borg's, and restic's
parent-snapshot check) ignore entries whose mtime/ctime is within a second of the backup start."""


def default_tree() -> Path:
    """The real tree: this interpreter's standard library (941 MB, 50,724 files for CPython 3.11.7)."""
    return Path(sysconfig.get_paths()["stdlib"])


@dataclass
class DataSet:
    """A directory that tools push, and the version of its contents (bumped by every edit)."""

    name: str
    path: Path
    version: int = 1
    files: int = 0
    bytes: int = 0
    touched: list[str] = field(default_factory=list)  # relative paths changed by the last edit

    def refresh(self) -> None:
        self.files, self.bytes = tree_size(self.path)


def tree_size(root: Path) -> tuple[int, int]:
    """(regular files, their total size) under root."""
    files = total = 0
    for dirpath, _, filenames in os.walk(root):
        for name in filenames:
            st = os.lstat(os.path.join(dirpath, name))
            if stat.S_ISREG(st.st_mode):
                files += 1
                total += st.st_size
    return files, total


def _stable_fraction(rel: str) -> float:
    """A number in [0, 1) fixed by the path: picks the same subset on every run and machine."""
    return int.from_bytes(hashlib.blake2b(rel.encode(), digest_size=8).digest(), "big") / 2**64


def copy_tree(src: Path, dst: Path, fraction: float = 1.0) -> None:
    """Copy src into dst (which must not exist) with modes, mtimes and symlinks; with fraction < 1, only the
    files whose path hashes below it, an even sample of every directory rather than the first ones."""
    if fraction >= 1.0:
        clone_tree(src, dst)
        return
    dst.mkdir(parents=True)
    for dirpath, dirnames, filenames in os.walk(src):
        dirnames.sort()
        rel_dir = os.path.relpath(dirpath, src)
        for name in sorted(filenames):
            rel = os.path.normpath(os.path.join(rel_dir, name))
            if _stable_fraction(rel) >= fraction:
                continue
            target = dst / rel
            target.parent.mkdir(parents=True, exist_ok=True)
            source = os.path.join(dirpath, name)
            if os.path.islink(source):
                os.symlink(os.readlink(source), target)
            else:
                shutil.copy2(source, target)


def clone_tree(src: Path, dst: Path) -> None:
    """An exact copy (modes, mtimes, symlinks) for stale copies: ``cp -a`` is several times faster than
    shutil.copytree on tens of thousands of files, which matters when it runs before every delta restore."""
    dst.parent.mkdir(parents=True, exist_ok=True)
    if shutil.which("cp") is not None:
        subprocess.run(["cp", "-a", "--", str(src), str(dst)], check=True, timeout=3600)
    else:
        shutil.copytree(src, dst, symlinks=True)


def _content(rng: random.Random, size: int, text: bool) -> bytes:
    parts = []
    left = size
    while left > 0:
        n = min(left, PIECE)
        piece = rng.randbytes(n)
        parts.append(piece.translate(TEXT_TABLE) if text else piece)
        left -= n
    return b"".join(parts)


def write_file(path: Path, rng: random.Random, size: int, text: bool) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "wb") as f:
        left = size
        while left > 0:
            n = min(left, PIECE)
            f.write(_content(rng, n, text))
            left -= n


def make_mix(root: Path, total: int, seed: int) -> None:
    """A generated tree of about ``total`` bytes: ~30 % small files (100 B to 64 KiB, log-uniform, in nested
    directories), ~30 % medium files (256 KiB to 8 MiB), ~40 % in a few large files; half text-like, half
    random; a few exact duplicates and one empty directory."""
    rng = random.Random(seed)
    root.mkdir(parents=True)
    budget = {"small": total * 0.3, "medium": total * 0.3, "large": total * 0.4}
    n = 0
    while budget["small"] > 0:
        size = int(2 ** rng.uniform(6.6, 16))
        d = root / "small" / f"d{rng.randrange(40):02}" / f"e{rng.randrange(8)}"
        write_file(d / f"f{n:06}.{'txt' if n % 2 else 'bin'}", rng, size, text=n % 2 == 1)
        budget["small"] -= size
        n += 1
    while budget["medium"] > 0:
        size = min(int(2 ** rng.uniform(18, 23)), max(int(budget["medium"]), 4096))
        write_file(root / "medium" / f"m{n:06}.dat", rng, size, text=n % 2 == 1)
        budget["medium"] -= size
        n += 1
    large = max(1, min(3, int(budget["large"] // (16 * 1024 * 1024))))
    for i in range(large):
        write_file(root / "large" / f"large-{i}.img", rng, int(budget["large"] / large), text=i % 2 == 1)
    small = sorted((root / "small").rglob("*.bin"))[:5]
    for i, p in enumerate(small):
        shutil.copy2(p, root / f"duplicate-{i}.bin")
    (root / "empty-dir").mkdir()


def make_big_file(path: Path, size: int, seed: int) -> None:
    """One file of random (incompressible) bytes, like a disk image or an archive."""
    write_file(path, random.Random(seed), size, text=False)


def edit_big_file(path: Path, rng: random.Random, edits: int = 100, edit_size: int = 100, insert: int = 4096) -> None:
    """``edits`` scattered overwrites of ``edit_size`` bytes and one ``insert``-byte insertion in the middle
    (which shifts everything after it: fixed-block tools lose alignment, content-defined chunking does not)."""
    data = bytearray(path.read_bytes())
    for _ in range(edits):
        at = rng.randrange(0, len(data) - edit_size)
        data[at : at + edit_size] = rng.randbytes(edit_size)
    middle = len(data) // 2 + rng.randrange(-4096, 4096)
    data[middle:middle] = rng.randbytes(insert)
    with open(path, "r+b") as f:
        f.write(data)
        f.truncate()


def regular_files(root: Path) -> list[str]:
    """Relative paths of the regular files under root, sorted (a stable base for random picks)."""
    out = []
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames.sort()
        for name in sorted(filenames):
            p = os.path.join(dirpath, name)
            if not os.path.islink(p) and os.path.isfile(p):
                out.append(os.path.relpath(p, root))
    return out


def change_files(ds: DataSet, fraction: float, rng: random.Random, added: int = 0, removed: int = 0) -> None:
    """Edit ``fraction`` of the files the way people do: overwrite a 64-byte span at a random place (same
    size, new mtime), or append a line to files smaller than that; optionally add and remove a few files."""
    files = regular_files(ds.path)
    count = max(1, round(len(files) * fraction))
    picked = rng.sample(files, min(count, len(files)))
    for rel in picked:
        p = ds.path / rel
        size = p.stat().st_size
        with open(p, "r+b") as f:
            if size >= 64:
                f.seek(rng.randrange(0, size - 63))
                f.write(rng.randbytes(64).translate(TEXT_TABLE))
            else:
                f.seek(0, os.SEEK_END)
                f.write(b"# edited\n")
    chosen = set(picked)
    rest = [f for f in files if f not in chosen]
    for rel in rng.sample(rest, min(removed, len(rest))):
        (ds.path / rel).unlink()
    for i in range(added):
        write_file(ds.path / f"added-v{ds.version + 1}" / f"new-{i}.txt", rng, rng.randrange(100, 20000), True)
    ds.touched = picked
    ds.version += 1
    ds.refresh()


def wait_racy() -> None:
    """Let the files caches trust what was just written (see RACY_WAIT)."""
    time.sleep(RACY_WAIT)


def compare_trees(expected: Path, actual: Path, limit: int = 10) -> list[str]:
    """Differences a restore must not have: missing or extra entries, types, file bytes, permission bits,
    file mtimes (to the second), symlink targets. Directory mtimes are not compared (tools differ there)."""
    problems: list[str] = []

    def entries(root: Path) -> dict[str, os.stat_result]:
        out = {}
        for dirpath, dirnames, filenames in os.walk(root):
            for name in dirnames + filenames:
                p = os.path.join(dirpath, name)
                out[os.path.relpath(p, root)] = os.lstat(p)
        return out

    want, got = entries(expected), entries(actual)
    for rel in sorted(set(want) - set(got))[:limit]:
        problems.append(f"missing {rel}")
    for rel in sorted(set(got) - set(want))[:limit]:
        problems.append(f"extra {rel}")
    for rel in sorted(set(want) & set(got)):
        if len(problems) >= limit:
            break
        a, b = want[rel], got[rel]
        if stat.S_IFMT(a.st_mode) != stat.S_IFMT(b.st_mode):
            problems.append(f"type differs: {rel}")
        elif stat.S_ISLNK(a.st_mode):
            if os.readlink(expected / rel) != os.readlink(actual / rel):
                problems.append(f"link target differs: {rel}")
        elif stat.S_ISREG(a.st_mode):
            if stat.S_IMODE(a.st_mode) != stat.S_IMODE(b.st_mode):
                problems.append(f"mode differs: {rel} {stat.S_IMODE(a.st_mode):o} != {stat.S_IMODE(b.st_mode):o}")
            elif int(a.st_mtime) != int(b.st_mtime):
                problems.append(f"mtime differs: {rel}")
            elif a.st_size != b.st_size or not same_bytes(expected / rel, actual / rel):
                problems.append(f"content differs: {rel}")
    return problems


def same_bytes(a: Path, b: Path) -> bool:
    """Byte-for-byte equality (filecmp keeps a cache keyed by size and mtime, which an edit can fool)."""
    with open(a, "rb") as fa, open(b, "rb") as fb:
        while True:
            x, y = fa.read(1 << 20), fb.read(1 << 20)
            if x != y:
                return False
            if not x:
                return True


GROWTH_DIR_ENTRIES = 1000
GROWTH_MAX_SIZE = 4096


def make_growth(root: Path, files: int, seed: int = 7) -> None:
    """``files`` small files (0 to 4 KiB, uniform; half text-like, half random) in directories of
    ``GROWTH_DIR_ENTRIES`` entries each (``d0000/f000.txt`` ...): what a mail spool or a cache directory looks
    like, and what makes a per-file cost visible. Deterministic for (files, seed), mtimes included, so a tree
    kept from an earlier run (see :func:`cached_growth`) is the same tree."""
    rng = random.Random(seed)
    root.mkdir(parents=True)
    mtime = 1_700_000_000
    for d in range((files + GROWTH_DIR_ENTRIES - 1) // GROWTH_DIR_ENTRIES):
        sub = root / f"d{d:04}"
        sub.mkdir()
        for i in range(min(GROWTH_DIR_ENTRIES, files - d * GROWTH_DIR_ENTRIES)):
            size = rng.randrange(GROWTH_MAX_SIZE + 1)
            text = i % 2 == 1
            piece = rng.randbytes(size)
            path = sub / f"f{i:03}.{'txt' if text else 'bin'}"
            with open(path, "wb") as f:
                f.write(piece.translate(TEXT_TABLE) if text else piece)
            os.utime(path, (mtime, mtime))


def cached_growth(cache: Path, files: int, seed: int = 7) -> tuple[Path, float]:
    """The growth tree of ``files`` files under ``cache`` (kept between runs: a million files take minutes to
    write), made now if it is missing or was left half-made; with the seconds it took (0 when reused)."""
    path = cache / f"growth-{files}-s{seed}"
    done = cache / f"growth-{files}-s{seed}.complete"
    if done.exists() and path.is_dir():
        return path, 0.0
    if path.exists():
        shutil.rmtree(path)
    t = time.monotonic()
    make_growth(path, files, seed)
    os.sync()
    done.write_text(f"{files} files, seed {seed}\n")
    return path, time.monotonic() - t
