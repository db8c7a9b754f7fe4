"""`ferlab serve`'s HTTP server: uvicorn with bounds on what a client can hold.

uvicorn closes a kept-alive connection that idles, but not one that opens and never finishes its request: a
client that sends half a request line and waits holds a socket (and a file descriptor) for ever, and about
20,000 of them (this machine's descriptor limit) stop the server from answering anyone, `/health` included.
Here each request must arrive whole (headers and body) within `request_timeout_s` of the connection opening
or of the previous answer, or the connection is closed; connections beyond `max_connections` are closed as
they open; and on SIGTERM or Ctrl-C, requests still running after `shutdown_s` are cancelled, so the
server (its inference workers with it) stops within seconds even with a video in flight.

A WebSocket (live mode, `/v1/live`) starts as an HTTP request and is handed to wsproto, h11's WebSocket sibling,
once upgraded; from then on the request deadline no longer applies (it would cut every live session at
`request_timeout_s`): the session's own limits hold it (`serve.live`: idle and total time), and uvicorn's pings
close a connection whose client went silent. A message larger than `ws_max_bytes` is not read further: the
connection is closed with 1009. Messages are not compressed (permessage-deflate off): frames are JPEGs, and
inflating a client's data costs the server the CPU time and memory the client chooses.
"""
from __future__ import annotations

import h11
from uvicorn.protocols.http.h11_impl import H11Protocol

REQUEST_TIMEOUT_S = 30.0   # a 10 MiB upload at 350 KB/s
MAX_CONNECTIONS = 1000     # well under the usual 1,024-20,000 descriptors a process may hold
KEEP_ALIVE_S = 5           # an idle kept-alive connection is closed after this (uvicorn's own timer)
SHUTDOWN_S = 3             # requests still running this long after SIGTERM / Ctrl-C are cancelled
WS_MAX_BYTES = 2**20       # a WebSocket message at most (live mode's frames; serve.live.LiveLimits.max_bytes)


def bounded_h11(request_timeout_s: float = REQUEST_TIMEOUT_S, max_connections: int = MAX_CONNECTIONS) -> type:
    """uvicorn's h11 protocol class with a deadline for each request and a cap on open connections."""
    if request_timeout_s <= 0 or max_connections < 1:
        raise ValueError(f"request timeout and connection cap must be positive, got {request_timeout_s} and "
                         f"{max_connections}")

    class BoundedH11(H11Protocol):
        _deadline = None

        def connection_made(self, transport):
            super().connection_made(transport)
            if len(self.connections) > max_connections:  # the set holds this one too
                transport.close()
                return
            self._arm()

        def data_received(self, data: bytes) -> None:
            super().data_received(data)
            if self.conn.their_state is not h11.IDLE and self.conn.their_state is not h11.SEND_BODY:
                self._disarm()  # the request is in (or the connection is done): the app has it now

        def handle_websocket_upgrade(self, event) -> None:
            self._disarm()  # a WebSocket now: the live session's own limits hold the connection (see above)
            super().handle_websocket_upgrade(event)

        def on_response_complete(self) -> None:
            super().on_response_complete()
            self._arm()  # the next request on this connection gets its own deadline

        def connection_lost(self, exc):
            self._disarm()
            super().connection_lost(exc)

        def _arm(self):
            self._disarm()
            self._deadline = self.loop.call_later(request_timeout_s, self._expire)

        def _disarm(self):
            if self._deadline is not None:
                self._deadline.cancel()
                self._deadline = None

        def _expire(self):
            self._deadline = None
            if self.conn.their_state in (h11.IDLE, h11.SEND_BODY) and not self.transport.is_closing():
                self.transport.close()

    return BoundedH11


def server_settings(request_timeout_s: float = REQUEST_TIMEOUT_S, max_connections: int = MAX_CONNECTIONS,
                    keep_alive_s: int = KEEP_ALIVE_S, shutdown_s: int = SHUTDOWN_S,
                    ws_max_bytes: int = WS_MAX_BYTES) -> dict:
    """uvicorn's settings (keyword arguments of uvicorn.run and uvicorn.Config) for the bounds above."""
    return dict(http=bounded_h11(request_timeout_s, max_connections), timeout_keep_alive=keep_alive_s,
                timeout_graceful_shutdown=shutdown_s, ws="wsproto", ws_max_size=ws_max_bytes,
                ws_per_message_deflate=False)


def serve(app, host: str, port: int, **bounds) -> None:
    """Run `app` until SIGTERM or Ctrl-C, with the bounds above (`bounds`: server_settings' arguments)."""
    import uvicorn
    uvicorn.run(app, host=host, port=port, **server_settings(**bounds))
