"""twistd plugin: ``twistd -n neophytos`` (see ``neotwist.tap``).

This directory deliberately has no ``__init__.py``: ``twisted.plugins`` is Twisted's package, and this file
only drops a module into it.
"""

from twisted.application.service import ServiceMaker

neophytos = ServiceMaker(
    "Neophytos",
    "neotwist.tap",
    "Neophytos backup server: the 'neophytos' SSH subsystem and the same protocol over TLS",
    "neophytos",
)
