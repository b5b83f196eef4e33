"""``twistd neophytos``: command-line options and the service tree of the server.

``makeService`` prepares the data directory (0700), the SSH host key, the TLS certificate, the account store
and the repository, then listens with the SSH server and the TLS server on the configured endpoints.
"""

from __future__ import annotations

import functools
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

from twisted.application import service
from twisted.logger import Logger
from twisted.python import usage

from neotwist.server import hostkeys
from neotwist.server.accounts import BCRYPT_ROUNDS, AccountStore, fingerprint
from neotwist.server.listen import Listener
from neotwist.server.ssh import make_ssh_factory
from neotwist.server.tls import make_tls_factory

log = Logger()

DEFAULT_DATA = "./neophytos-data"
DEFAULT_SSH = "4322"
DEFAULT_TLS = "4323"
DEFAULT_MIN_FREE = "2%"
"""``--min-free``: a few percent of the file system, as ext4 keeps for root (see repository/space.py)."""
DEFAULT_MAX_OPEN_TARGETS = 64
"""Targets kept open while nobody uses them (``Repository``'s bound; docs/admin.md gives the cost of each)."""
DEFAULT_TARGET_IDLE = 300.0
"""Seconds an unused target stays open."""


def endpoint_description(value: str, option: str) -> str | None:
    """A listening endpoint string from an option value: a bare port number means ``tcp:N``; ``none``
    disables the listener (None)."""
    value = value.strip()
    if value.lower() == "none":
        return None
    if value.isdigit():
        port = int(value)
        if not 0 <= port <= 65535:
            raise usage.UsageError(f"--{option}: port {port} is out of range 0-65535")
        return f"tcp:{port}"
    if not value or ":" not in value:
        raise usage.UsageError(f"--{option}: give a port number, an endpoint such as tcp:4322, or 'none'")
    if option == "tls" and value.split(":", 1)[0].lower() in ("ssl", "tls"):
        raise usage.UsageError(
            "--tls: give the plain stream endpoint to listen on (e.g. tcp:4323); TLS is added by the server"
        )
    return value


class Options(usage.Options):
    synopsis = "[--data DIR] [--ssh PORT|ENDPOINT|none] [--tls PORT|ENDPOINT|none]"
    longdesc = (
        "Run the Neophytos backup server: the 'neophytos' SSH subsystem and the same protocol over TLS. "
        "Accounts are managed with neo-admin --data DIR (also while the server runs). "
        "Endpoints use Twisted's syntax, e.g. tcp:4322:interface=127.0.0.1 or systemd:domain=INET:index=0."
    )
    optParameters = [
        ["data", None, DEFAULT_DATA, "Data directory: accounts, host keys, TLS certificate, repository."],
        ["ssh", None, DEFAULT_SSH, "SSH listening port or endpoint ('none' disables SSH)."],
        ["tls", None, DEFAULT_TLS, "TLS listening port or plain stream endpoint ('none' disables TLS)."],
        ["ssh-log-level", None, "warn", "SSH protocol detail in the log: debug, info, warn or error. Logins, "
         "failed logins, commits and errors are always logged."],
        ["min-free", None, DEFAULT_MIN_FREE, "Free space pushes leave on the data directory's file system, as a "
         "percentage or a size (2%, 10GiB, 0): a push is refused, with the numbers, below it."],
        ["max-open-targets", None, str(DEFAULT_MAX_OPEN_TARGETS), "Targets kept open while no connection uses "
         "them (least recently used ones are closed beyond it); each costs about 7 file descriptors (up to 70 "
         "for a big target being read) and its index caches."],
        ["target-idle", None, str(int(DEFAULT_TARGET_IDLE)), "Seconds a target no connection uses stays open."],
    ]

    def __init__(self) -> None:
        super().__init__()
        self["bcrypt_rounds"] = BCRYPT_ROUNDS

    def opt_bcrypt_rounds(self, value: str) -> None:
        # Hidden (see getUsage): only tests lower the bcrypt work factor.
        try:
            rounds = int(value)
        except ValueError:
            raise usage.UsageError("--bcrypt-rounds must be an integer") from None
        if not 4 <= rounds <= 31:
            raise usage.UsageError("--bcrypt-rounds must be between 4 and 31")
        self["bcrypt_rounds"] = rounds

    def opt_version(self) -> None:
        """Print the Neophytos version and exit (``twistd --version`` prints Twisted's)."""
        from neotwist import __version__

        print(f"twistd neophytos (Neophytos) {__version__}")
        raise SystemExit(0)

    def getUsage(self, width: int | None = None) -> str:
        text: str = super().getUsage(width)
        return "\n".join(line for line in text.splitlines() if "bcrypt-rounds" not in line) + "\n"

    def postOptions(self) -> None:
        self["ssh_endpoint"] = endpoint_description(self["ssh"], "ssh")
        self["tls_endpoint"] = endpoint_description(self["tls"], "tls")
        from neotwist.server.logs import LEVELS

        if self["ssh-log-level"] not in LEVELS:
            raise usage.UsageError(f"--ssh-log-level: one of {', '.join(LEVELS)}, not {self['ssh-log-level']!r}")
        if self["ssh_endpoint"] is None and self["tls_endpoint"] is None:
            raise usage.UsageError("--ssh none and --tls none leave nothing to serve")
        from neotwist.server.repository.space import Reserve

        try:
            self["reserve"] = Reserve.parse(self["min-free"])
        except ValueError as e:
            raise usage.UsageError(f"--min-free: {e}") from None
        try:
            self["max_open_targets"] = int(self["max-open-targets"])
        except ValueError:
            raise usage.UsageError(f"--max-open-targets: a whole number, not {self['max-open-targets']!r}") from None
        if self["max_open_targets"] < 1:
            raise usage.UsageError("--max-open-targets: at least 1")
        try:
            self["target_idle"] = float(self["target-idle"])
        except ValueError:
            raise usage.UsageError(f"--target-idle: a number of seconds, not {self['target-idle']!r}") from None
        if not 0 <= self["target_idle"] <= 86400:
            raise usage.UsageError("--target-idle: seconds from 0 to 86400")


def prepare_data_dir(data: Path) -> Path:
    """Create the data directory owner-only (0700); refuse one that others can write to."""
    data = data.expanduser().resolve()
    data.mkdir(mode=0o700, parents=True, exist_ok=True)
    mode = data.stat().st_mode & 0o777
    if mode & 0o022:
        raise usage.UsageError(
            f"data directory {data} is writable by others (mode {mode:o}): chmod 700 {data}"
        )
    if mode & 0o077:
        os.chmod(data, 0o700)
    return data


SHRINK_INTERVAL = 120.0
"""Seconds between returns of idle index page caches to the system (``Repository.shrink_memory``)."""

IDLE_CHECK_INTERVAL = 1.0
"""Seconds between looks at targets let go of and at whether the server has gone idle (no connection left)
(``Repository.settle``): a target let go of gives its page caches back within this time, and the first look that
finds the server idle after some activity closes every target nobody holds and gives the memory back, rather
than at the next SHRINK_INTERVAL or after ``--target-idle``: 16 clients' pushes left twistd at 3-4x its baseline
RSS for up to two minutes, and 16 MiB above it for five."""

MAINTAIN_INTERVAL = 10.0
"""Seconds between checks of the free space, of aborted pushes' leftovers and of idle targets
(``Repository.maintain``)."""


class _RepositoryService(service.Service):
    """Returns idle targets' page caches every SHRINK_INTERVAL, and every MAINTAIN_INTERVAL watches the free
    space and closes targets unused for too long (each in a worker thread, one round at a time); every
    IDLE_CHECK_INTERVAL settles the targets let go of, and once the last connection has closed, lets the
    server's memory go back to what it was (:meth:`_calm_down`); flushes and closes the repository when the
    server stops (after the listeners, which stop first)."""

    def __init__(self, repository: Any, busy: Callable[[], bool] | None = None) -> None:
        self.repository = repository
        self._busy = busy  # whether any connection is open
        self._was_busy = False
        self._calming: int | None = None  # the step of _calm_down to take at the next look, if any
        self._loops: list[Any] = []
        self._running: dict[str, Any] = {}

    def startService(self) -> None:
        from twisted.internet import reactor
        from twisted.internet.task import LoopingCall

        super().startService()
        # Closed once the reactor's thread pool has stopped (it finishes the jobs it runs, then joins its threads):
        # closing at stopService would pull the index from under uploads still running in it.
        core: Any = reactor  # mypy reads IReactorCore.addSystemEventTrigger's zope signature one argument off
        core.addSystemEventTrigger("after", "shutdown", self.repository.close)
        for note in self.repository.space_notes:
            log.warn("{note}", note=note)
        loops = [(SHRINK_INTERVAL, self._shrink), (MAINTAIN_INTERVAL, self._maintain)]
        if self._busy is not None:
            loops.append((IDLE_CHECK_INTERVAL, self._watch_idle))
        for interval, work in loops:
            loop = LoopingCall(work)
            loop.start(interval, now=False)
            self._loops.append(loop)

    def _in_thread(self, name: str, work: Any, done: Any = None) -> bool:
        """Run ``work`` in a worker thread; False (and nothing run) while its previous round still runs."""
        from twisted.internet.threads import deferToThread

        if name in self._running:  # the previous round still running: skip this one
            return False
        d = self._running[name] = deferToThread(work)
        if done is not None:
            d.addCallback(done)
        d.addErrback(lambda f: log.failure("{name}", f, name=name))
        d.addBoth(lambda _: self._running.pop(name, None))
        return True

    def _shrink(self) -> None:
        self._in_thread("shrinking page caches", self.repository.shrink_memory)

    def _watch_idle(self) -> None:
        """Settle the targets let go of, and once when the last connection is gone, every target nobody holds
        (see IDLE_CHECK_INTERVAL)."""
        assert self._busy is not None
        busy = self._busy()
        if busy:
            self._was_busy, self._calming = True, None
        quiet = self._was_busy and not busy
        if (quiet or self.repository.unsettled()) and self._in_thread(
            "settling idle targets", lambda: self.repository.settle(quiet)
        ):
            if quiet:  # else a round still running: the next look tries again
                self._was_busy, self._calming = False, 0
        elif self._calming is not None and not busy and "settling idle targets" not in self._running:
            self._calm_down()

    def _calm_down(self) -> None:
        """The steps after the targets of a server gone idle are settled, one per look (each needs the one before
        to have ended): the idle worker threads end, then the memory they and the targets freed goes back to the
        system. On the reactor's thread: running them as a job would start a worker again."""
        from twisted.internet import reactor

        from neotwist.runtime import forget_ended_workers, release_free_memory, retire_idle_workers

        if self._calming == 0:
            retire_idle_workers(reactor.getThreadPool())
            self._calming = 1
        else:
            forget_ended_workers(reactor.getThreadPool())
            release_free_memory()
            self._calming = None

    def _maintain(self) -> None:
        def report(notes: list[str]) -> None:
            for note in notes:
                log.warn("{note}", note=note)

        self._in_thread("watching free space", self.repository.maintain, report)

    def stopService(self) -> Any:
        super().stopService()
        for loop in self._loops:
            if loop.running:
                loop.stop()
        running = list(self._running.values())
        if not running:
            return None
        from twisted.internet.defer import DeferredList

        return DeferredList(running)


def makeService(options: Options) -> service.MultiService:
    from twisted.internet import reactor

    from neotwist.runtime import tune_malloc, tune_threads

    tune_threads()  # worker threads' disk I/O must not wait on the reactor thread for the GIL
    tune_malloc()  # every SSH packet's copies reuse heap memory instead of faulting it in again

    # Imported here so `twistd --help` works without loading the repository and session code.
    from neotwist.server import descriptors
    from neotwist.server.logs import set_ssh_log_level
    from neotwist.server.repository import Repository
    from neotwist.server.session import ServerServices, make_server_peer

    set_ssh_log_level(options["ssh-log-level"])
    soft, hard = descriptors.raise_limit()
    log.info(
        "file descriptors: limit {soft} (hard {hard}); at most {targets} unused targets stay open, for {idle:g} s",
        soft=soft,
        hard=hard,
        targets=options["max_open_targets"],
        idle=options["target_idle"],
    )
    data = prepare_data_dir(Path(options["data"]))

    def close_failed(target: Any, error: Exception) -> None:
        log.warn("closing idle target {target}: {error}", target=repr(target), error=str(error))

    # The repository first: on a full disk it releases the emergency space before anything opens a database.
    repository = Repository(
        data / "repo",
        reserve=options["reserve"],
        max_open=options["max_open_targets"],
        idle=options["target_idle"],
        on_close_error=close_failed,
    )
    accounts = AccountStore(data / "accounts.sqlite", bcrypt_rounds=options["bcrypt_rounds"])
    from neotwist.server.throttle import LoginThrottle

    throttle = LoginThrottle(reactor)  # one count of failed logins for SSH and TLS
    from neotwist.server.admission import MAX_UNAUTHENTICATED, Admission, descriptor_share

    admission = Admission(descriptor_share(MAX_UNAUTHENTICATED))  # connections not yet logged in, SSH and TLS
    services = ServerServices(repository=repository, accounts=accounts, reactor=reactor, throttle=throttle)
    top = service.MultiService()
    _RepositoryService(repository, busy=lambda: bool(services.sessions)).setServiceParent(top)

    if options["ssh_endpoint"] is not None:
        host_key = hostkeys.load_or_create_host_key(data)
        peer_factory: Any = functools.partial(make_server_peer, services)
        ssh_factory: Any = make_ssh_factory(
            host_key, accounts, peer_factory, reactor, run_blocking=services.run_blocking, throttle=throttle,
            admission=admission,
        )
        Listener(reactor, options["ssh_endpoint"], ssh_factory, "SSH", "--ssh",
                 f"host key {fingerprint(host_key)}").setServiceParent(top)  # fmt: skip

    if options["tls_endpoint"] is not None:
        cert_path, key_path = hostkeys.load_or_create_tls(data)
        tls_peer_factory: Any = functools.partial(make_server_peer, services, None)
        tls_factory = make_tls_factory(cert_path, key_path, tls_peer_factory, reactor, admission)
        Listener(reactor, options["tls_endpoint"], tls_factory, "TLS", "--tls",
                 f"public key {hostkeys.tls_public_key_fingerprint(cert_path)}").setServiceParent(top)  # fmt: skip

    if not accounts.list():
        log.info(
            "no accounts yet: neo-admin --data {data} init (or: account add NAME)", data=str(data)
        )
    return top
