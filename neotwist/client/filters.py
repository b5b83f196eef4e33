"""Which local files a push (or pull) takes: gitignore-style patterns plus the original client's regex rules.

A filter file mixes two kinds of lines, classified one line at a time:

- ``<file|dir|path> <accept|reject> <regex>``: the original Neophytos rule format. ``file`` rules match the
  name of a file, ``dir`` rules the name of a directory, ``path`` rules the path relative to the local root
  ('/'-separated, for files and directories). The regex is searched (``re.search``) in the subject. Rules are
  tried in file order and the first that matches decides.
- anything else that is not blank or a ``#`` comment: a gitignore pattern (``*.pyc``, ``build/``,
  ``!keep.me``) as git reads it (:class:`pathspec.GitIgnoreSpec`; a pattern excludes, ``!`` re-includes).

An item is judged by the regex rules first (their first match wins); when none matches, the gitignore patterns
decide; with neither, it is taken. A directory that is rejected is never descended, so nothing under it is
even listed. ``--exclude PATTERN`` adds gitignore patterns after the file's. A filter also carries the
push's directory-level rules (:mod:`neotwist.client.dirrules`: other file systems, tagged directories).
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Literal

from neotwist.client.dirrules import DirRules

if TYPE_CHECKING:
    from pathspec import GitIgnoreSpec

RuleKind = Literal["file", "dir", "path"]

_RULE = re.compile(r"^(file|dir|path)\s+(accept|reject)\s+(.+?)\s*$")

SAMPLE = """\
# Neophytos filter file: one rule a line, '#' starts a comment.
#
# Two kinds of lines may be mixed:
#
# 1. gitignore patterns (as in a .gitignore file): they exclude, '!' re-includes.
*.pyc
__pycache__/
.cache/
*.tmp
!important.tmp
#
# 2. the original Neophytos rules: <file|dir|path> <accept|reject> <regex>
#    file = the regex is searched in a file's name, dir = in a directory's name,
#    path = in the path relative to the pushed directory ('/'-separated).
#    These rules are tried first, in order; the first that matches decides.
#    When none matches, the gitignore patterns above decide; otherwise the item is taken.
dir reject ^\\.git$
dir reject ^node_modules$
file reject \\.(iso|img)$
path accept ^projects/keep/
path reject ^projects/scratch
file reject ~$
"""
"""What ``--make-sample-filter-file`` writes to filter.example."""


class FilterError(ValueError):
    """A filter file or pattern could not be used; the message names the file and line."""


@dataclass(frozen=True, slots=True)
class Rule:
    """One original-format rule."""

    kind: RuleKind
    accept: bool
    regex: re.Pattern[str]


@dataclass
class Filter:
    """Decides per item whether a push takes it. Build with :meth:`from_lines` / :meth:`from_file`."""

    rules: list[Rule] = field(default_factory=list)
    patterns: list[str] = field(default_factory=list)
    dirs: DirRules | None = None  # --one-file-system, --exclude-caches, --exclude-if-present (applied by the walk)
    _spec: GitIgnoreSpec | None = field(default=None, init=False, repr=False)

    def __post_init__(self) -> None:
        self._compile()

    def _compile(self) -> None:
        self._spec = None
        if self.patterns:  # pathspec is loaded only for patterns: it was 15 ms of every push's start-up
            from pathspec import GitIgnoreSpec

            self._spec = GitIgnoreSpec.from_lines(self.patterns)
        self._file_rules = [r for r in self.rules if r.kind != "dir"]
        self._dir_rules = [r for r in self.rules if r.kind != "file"]

    @property
    def empty(self) -> bool:
        """True when the filter takes everything (the scanner then skips calling it)."""
        return not self.rules and self._spec is None

    @classmethod
    def from_lines(cls, lines: Iterable[str], source: str = "<filter>") -> Filter:
        rules: list[Rule] = []
        patterns: list[str] = []
        for number, raw in enumerate(lines, 1):
            line = raw.rstrip("\r\n")
            stripped = line.strip()
            if not stripped or stripped.startswith("#"):
                continue
            match = _RULE.match(stripped)
            if match is None:
                patterns.append(line)
                continue
            kind, verdict, regex = match.groups()
            try:
                compiled = re.compile(regex)
            except re.error as e:
                raise FilterError(f"{source}:{number}: bad regular expression {regex!r}: {e}") from None
            rules.append(Rule(kind, verdict == "accept", compiled))  # type: ignore[arg-type]
        try:
            return cls(rules=rules, patterns=patterns)
        except ValueError as e:  # pathspec refuses a malformed pattern
            raise FilterError(f"{source}: bad pattern: {e}") from None

    @classmethod
    def from_file(cls, path: str | Path) -> Filter:
        try:
            text = Path(path).read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as e:
            raise FilterError(f"cannot read filter file {path}: {e}") from None
        return cls.from_lines(text.splitlines(), source=str(path))

    def add_patterns(self, patterns: Iterable[str]) -> None:
        """Append gitignore patterns (``--exclude``); they come after the file's and so override them."""
        self.patterns.extend(patterns)
        try:
            self._compile()
        except ValueError as e:
            raise FilterError(f"bad --exclude pattern: {e}") from None

    def take_file(self, relpath: str, name: str) -> bool:
        """Should the file (or symlink) at ``relpath`` (last component ``name``) be taken?"""
        for rule in self._file_rules:
            if rule.regex.search(name if rule.kind == "file" else relpath) is not None:
                return rule.accept
        return self._spec is None or not self._spec.match_file(relpath)

    def take_dir(self, relpath: str, name: str) -> bool:
        """Should the directory at ``relpath`` be taken (and descended)?"""
        for rule in self._dir_rules:
            if rule.regex.search(name if rule.kind == "dir" else relpath) is not None:
                return rule.accept
        return self._spec is None or not self._spec.match_file(relpath + "/")


def write_sample(directory: Path) -> Path:
    """Write filter.example in ``directory`` (refusing to overwrite a different file) and return its path."""
    path = directory / "filter.example"
    if path.exists() and path.read_text(encoding="utf-8", errors="replace") != SAMPLE:
        raise FilterError(f"{path} exists and differs from the sample; remove it first")
    path.write_text(SAMPLE, encoding="utf-8")
    return path
