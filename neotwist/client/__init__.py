"""The Neophytos client: reach a server and run pushes and pulls over one session.

- :mod:`~neotwist.client.remote` parses ``[ssh://|tls://][USER@]HOST[:PORT]/TARGET[/SUBPATH]``.
- :mod:`~neotwist.client.connect` opens a :class:`~neotwist.client.connect.Session` over one of three
  transports: conch SSH (:mod:`~neotwist.client.sshclient`, the default), an OpenSSH process
  (:mod:`~neotwist.client.openssh`, ``--ssh-command``) or TLS (:mod:`~neotwist.client.tlsclient`, ``tls://``).
- :mod:`~neotwist.client.knownhosts` pins SSH host keys and TLS public keys (trust on first use, refuse
  changes).

- :mod:`~neotwist.client.remotetarget` opens a target once (its pin, encryption and key checked) and makes
  the requests on it; :mod:`~neotwist.client.push` and :mod:`~neotwist.client.pull` are the pipelines.
- :mod:`~neotwist.client.api` is the public API over all of it (docs/api.md): the neo-* command lines parse
  their arguments, call it, and print.

The transports only move bytes for a :class:`~neotwist.wire.peer.Peer`; everything above the byte stream
(framing, flow control, requests) is the same whichever transport carries it.
"""
