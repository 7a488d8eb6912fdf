"""The keep-alive drain: a mixin for uvicorn's HTTP protocol classes, passed through uvicorn's
own `http=` option.

On a graceful shutdown uvicorn calls `shutdown()` on every connection; upstream closes an idle
keep-alive connection at once. That races the client's next request — often already in the
socket buffer — and the close becomes a reset. Here an idle connection stays open for a short
grace: a request arriving in it is served and answered with `Connection: close`, so the client
reconnects (to another worker) without an error; a connection still idle at the end of the grace
is closed, as upstream does. A request in flight finishes and its response says `Connection:
close`, as upstream does.
"""

import asyncio


class DrainMixin:
    #: seconds an idle connection is kept open after shutdown begins
    drain_grace = 1.0
    _draining = False

    def shutdown(self):
        if self._draining:
            return
        self._draining = True
        cycle = getattr(self, "cycle", None)
        if cycle is not None and not cycle.response_complete:
            cycle.keep_alive = False
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
                cycle.keep_alive = False


def draining(protocol_class, grace):
    """`protocol_class` (uvicorn's H11Protocol, HttpToolsProtocol…) with the drain."""
    return type("Draining" + protocol_class.__name__, (DrainMixin, protocol_class), {"drain_grace": grace})
