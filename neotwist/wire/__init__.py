"""The Neophytos wire protocol: frames, messages, limits and errors.

Everything in this package is sans-IO: no reactor, no sockets. The Twisted adapter that drives it over an SSH
channel, a TLS stream or an OpenSSH subprocess lives in :mod:`neotwist.wire.peer`.
"""
