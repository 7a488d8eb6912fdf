"""The keep-alive drain: a mixin for uvicorn's HTTP protocol classes, passed through uvicorn's
own `http=` option.

On a graceful shutdown uvicorn calls `shutdown()` on every connection; upstream closes an idle
keep-alive connection at once. That races the client's next request — often already in the
socket buffer — and the close becomes a reset. Here an idle connection stays open for a short
grace: a request arriving in it is served and answered with `Connection: close`, so the client
reconnects (to another worker) without an error; a connection still idle at the end of the grace
is closed, as upstream does. A request in flight finishes and its response says `Connection:
close` — which upstream's h11 implementation does not say: it closes after the response without
telling the client, so the client's next request on that connection is reset. The header goes in
through the cycle's `default_headers`, which both h11 and httptools put first in every response:
nothing is added to a request's path while the worker is not draining.
"""

import asyncio

CLOSE = (b"connection", b"close")


def _close_after(cycle):
    """This request's response says Connection: close, and the connection closes after it."""
    cycle.keep_alive = False
    if not getattr(cycle, "response_started", True) and CLOSE not in cycle.default_headers:
        cycle.default_headers = list(cycle.default_headers) + [CLOSE]


class DrainMixin:
    #: seconds an idle connection is kept open after shutdown begins (drover-uvicorn: uvicorn's
    #: --timeout-keep-alive, unless --drain-grace says otherwise)
    drain_grace = 5.0
    _draining = False

    def connection_made(self, transport):
        super().connection_made(transport)
        # accepted just before the server stopped listening, but made after it asked every
        # connection to shut down: drain this one too, or it would keep the worker up until killed
        if getattr(self.server_state, "drover_draining", False):
            self.shutdown()

    def shutdown(self):
        if self._draining:
            return
        self._draining = True
        cycle = getattr(self, "cycle", None)
        if cycle is not None and not cycle.response_complete:
            _close_after(cycle)
            return
        asyncio.get_event_loop().call_later(self.drain_grace, self._drain_expired)

    def _drain_expired(self):
        cycle = getattr(self, "cycle", None)
        if cycle is None or cycle.response_complete:
            # still idle: close, as uvicorn does at once
            super(DrainMixin, self).shutdown()

    def data_received(self, data):
        super().data_received(data)
        if self._draining:
            cycle = getattr(self, "cycle", None)
            if cycle is not None and not cycle.response_complete:
                # a request on a draining connection: answered with Connection: close
                _close_after(cycle)


def draining(protocol_class, grace):
    """`protocol_class` (uvicorn's H11Protocol, HttpToolsProtocol…) with the drain."""
    return type("Draining" + protocol_class.__name__, (DrainMixin, protocol_class), {"drain_grace": grace})
