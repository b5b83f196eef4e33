"""The Neophytos server: SSH and TLS front ends, sessions, accounts, and the repository that stores the data.

The front ends (:mod:`neotwist.server.ssh`, :mod:`neotwist.server.tls`) only authenticate and carry bytes; one
session per connection turns protocol messages into calls on :mod:`neotwist.server.repository`, which
is plain,
synchronous, thread-safe code run from the reactor's thread pool so the reactor never waits on a disk.
"""
