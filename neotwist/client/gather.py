"""Waiting for many requests at once, as the push pipeline sends them (``have`` batches, ``sign`` groups)."""

from __future__ import annotations

from typing import Any

from twisted.internet.defer import Deferred, DeferredList, FirstError


async def gather(ds: list[Deferred[Any]]) -> list[Any]:
    """The results of ``ds`` in order; the first failure is raised as itself (not wrapped in FirstError, so its
    typed error reaches the caller), and the others are consumed so none is reported as unhandled."""
    try:
        results = await DeferredList(ds, fireOnOneErrback=True, consumeErrors=True)
    except FirstError as e:
        for d in ds:
            d.addErrback(lambda _f: None)
        e.subFailure.raiseException()
    return [value for _ok, value in results]
