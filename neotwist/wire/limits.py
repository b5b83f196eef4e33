"""Every bound the protocol enforces, in one place so docs/protocol.md can cite it.

Each number bounds something that arrives from the wire before it is used: a peer that exceeds one gets a
``limit_exceeded`` (or ``bad_frame``) error and a closed connection.
"""

# Bounds of the stored data (chunk id size, a push's entries, a file's chunks), enforced on the wire too.
from neotwist.bounds import ID_SIZE as ID_SIZE
from neotwist.bounds import MAX_CHUNKS_PER_FILE as MAX_CHUNKS_PER_FILE
from neotwist.bounds import MAX_PUSH_ENTRIES as MAX_PUSH_ENTRIES

PROTOCOL_VERSION = 1
"""Bumped on any incompatible change to frames or messages."""

FRAME_HEADER = 4
"""Every frame starts with its body length as a 4-byte big-endian unsigned integer."""

MAX_CHUNK = 4 * 1024 * 1024
"""Largest chunk, raw or compressed (the chunker's max_size is far below it)."""

MAX_FRAME = MAX_CHUNK + 64 * 1024
"""Largest frame body: one full chunk plus its message envelope."""

WINDOW = 16 * 1024 * 1024
"""Default receive window (bytes of frames a peer may send before it is granted more credit)."""

MIN_WINDOW = 2 * MAX_FRAME
"""A peer may not advertise a window that could not carry one largest frame."""

MAX_WINDOW = 256 * 1024 * 1024
"""A peer may not advertise more than this (our own output queue is bounded by the peer's window)."""

MAX_IDS = 8192
"""Chunk ids in one ``have`` or ``get`` request."""

MAX_GET_FILES = 1024
"""Files named by one ``get_files`` request (their chunk ids together at most ``MAX_IDS``)."""

MAX_ENTRIES = 4096
"""Entries in one ``entries`` message or one ``listing`` page."""

MAX_PRUNE_LISTED = 20_000
"""Snapshots listed in one ``pruned`` reply or named in one ``check_report`` (the counts are always exact)."""
MAX_FILE_CHUNK_IDS = 65536
"""Chunk ids carried by one entry record; a larger file continues in the next record (``more``)."""

MAX_PATH = 32 * 1024
"""Bytes in one path (relative to the target): eight times Linux's PATH_MAX, which limits one system call,
not how deep a tree goes (the client walks and restores with directory descriptors)."""

MAX_WIRE_PATH = 4 * MAX_PATH
"""Characters in one path's wire text (a byte that is not UTF-8 travels as a 4-character escape)."""

MAX_NAME = 255
"""Bytes in one path component, account name or target name."""

MAX_LINK = 4096
"""Bytes in one symlink target (the kernel's own limit)."""

MAX_WIRE_LINK = 4 * MAX_LINK
"""Characters in one symlink target's text (escaped where it is not UTF-8)."""

FEATURE_BYTE_NAMES = "byte-names"
"""Listed in ``welcome.features`` by a server that stores any path bytes (escaped wire text, see
docs/protocol.md): only then does a client push a name that is not UTF-8 or holds a backslash."""

MAX_META = 64 * 1024
"""Bytes in one opaque (encrypted) metadata blob."""

# --- encryption ---
MAX_KEY_CHECK = 1024
"""``Open.key_check`` / ``Opened.key_check``: an encrypted target's key-check record (81 bytes in format 1)."""

MAX_TEXT = 4096
"""Bytes in a free-text field (error message, client name)."""

MAX_PASSWORD = 72
"""bcrypt only looks at 72 bytes; longer passwords are refused rather than silently cut."""

MAX_OPEN_HANDLES = 16
"""Targets opened at once on one connection."""

LOGIN_TIMEOUT = 60
"""Seconds a connection may take to authenticate."""

FEATURE_PING = "ping"
"""Listed in ``welcome.features`` by a server that answers ``ping``: only then does a client send them."""

SILENCE_TIMEOUT = 120
"""Seconds a client hears nothing from the server (pings unanswered) before it gives up (``--timeout``)."""

IDLE_TIMEOUT = 3600
"""Seconds without a frame before the server closes a connection."""

# --- sub-accounts, grants, usage -----------------------------------------------------------------------------

MAX_KEY_LINE = 16 * 1024
"""Characters in one OpenSSH public key line sent to create or change a sub-account."""

MAX_KEYS_PER_MESSAGE = 16
"""Public keys added or removed by one sub-account request."""

MAX_SUB_ACCOUNTS = 1000
"""Sub-accounts one account may create from the client (neo-admin is not limited)."""

MAX_GRANTS_GIVEN = 500
"""Grants one account may give from the client: their listing must fit one frame (500 x 4.4 KiB at most)."""

FEATURE_GET_FILES = "get_files"
"""Listed in ``welcome.features`` by a server that answers ``get_files``: only then does a client send it."""
