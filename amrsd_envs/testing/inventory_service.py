"""A real inventory/orders HTTP service on loopback, for tool-use tasks and tests.

Stdlib only (``http.server`` in a background thread). Start it with a context manager::

    with InventoryService(seed=3) as service:       # port 0: the OS picks a free port
        service.base_url                             # 'http://127.0.0.1:54321'
        service.host_port                            # '127.0.0.1:54321' (for ToolContext.allowed_hosts)
        ...                                          # HTTP calls
        service.state()                              # what a verifier checks

Endpoints (JSON in, JSON out; errors are ``{"error": "..."}``):

======  ===============  =====================================================================
GET     /items           200 ``{"items": [item, ...]}`` sorted by sku
GET     /items/{sku}     200 ``item``; 404 unknown sku
POST    /orders          body ``{"sku": str, "qty": int >= 1}``; 201 ``{"order": order}`` and the
                         stock drops by qty; 409 when stock < qty (nothing changes); 404 unknown
                         sku; 400 malformed body
GET     /orders          200 ``{"orders": [order, ...]}`` in creation order
POST    /reset           body ``{"seed": int | str}``; 200, catalog regenerated from the seed and
                         orders cleared; 403 when the service was started with allow_reset=False
======  ===============  =====================================================================

An item is ``{"sku", "name", "price_cents", "stock"}``; an order is ``{"order_id", "sku", "qty",
"total_cents"}``. The catalog is a pure function of the seed (:func:`catalog_for_seed`), so task
generators and oracles can compute the expected state without starting the server.
"""

from __future__ import annotations

import json
import random
import socket
import threading
from dataclasses import asdict, dataclass, field, replace
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import unquote, urlsplit

__all__ = ["InventoryService", "InventoryState", "Item", "Order", "RequestRecord", "catalog_for_seed"]

MAX_BODY_BYTES = 64 * 1024
CATALOG_SIZE = 8
_PRODUCTS = (
    "hex bolt M6", "wood screw 4x40", "washer 8 mm", "cable tie 200 mm", "LED bulb E27", "AA battery",
    "duct tape roll", "safety gloves", "measuring tape 5 m", "spirit level", "claw hammer", "utility knife",
    "drill bit set", "sandpaper P120", "wall plug 6 mm", "extension cord 10 m", "paint brush 50 mm",
    "masking tape", "zip bag 1 L", "work lamp",
)  # fmt: skip


@dataclass(frozen=True)
class Item:
    """A product: stock keeping unit, name, unit price in cents, units in stock."""

    sku: str
    name: str
    price_cents: int
    stock: int


@dataclass(frozen=True)
class Order:
    """A placed order (orders are only created when stock sufficed)."""

    order_id: int
    sku: str
    qty: int
    total_cents: int


@dataclass(frozen=True)
class RequestRecord:
    """One request the service answered: method, path (without query) and status code."""

    method: str
    path: str
    status: int


@dataclass(frozen=True)
class InventoryState:
    """A snapshot of the service: items by sku, orders in creation order, and every request served."""

    seed: int | str
    items: dict[str, Item]
    orders: tuple[Order, ...]
    requests: tuple[RequestRecord, ...] = field(default=())


def catalog_for_seed(seed: int | str) -> dict[str, Item]:
    """The initial items for ``seed``: :data:`CATALOG_SIZE` products with seeded prices and stock.

    Some items may have small or zero stock, so tasks can exercise the 409 path.
    """
    if isinstance(seed, bool) or not isinstance(seed, (int, str)):
        raise TypeError(f"seed must be an int or str, got {type(seed).__name__}")
    rng = random.Random(f"inventory:{seed}")
    names = rng.sample(_PRODUCTS, CATALOG_SIZE)
    numbers = rng.sample(range(100, 1000), CATALOG_SIZE)
    items = {}
    for name, number in zip(names, numbers):
        sku = f"SKU-{number}"
        items[sku] = Item(sku=sku, name=name, price_cents=rng.randrange(99, 10_000), stock=rng.choice(
            (0, 1, 2, 3, 5, 8, 12, 20, 35, 50)
        ))
    return dict(sorted(items.items()))


@dataclass(frozen=True)
class _Reply:
    """A response to send: status and JSON payload."""

    status: HTTPStatus
    payload: Any


class _IPv6Server(ThreadingHTTPServer):
    address_family = socket.AF_INET6


class _HttpError(Exception):
    def __init__(self, status: HTTPStatus, message: str, **extra: Any) -> None:
        super().__init__(message)
        self.status = status
        self.payload = {"error": message, **extra}


class InventoryService:
    """The running service; a context manager (``start``/``stop`` also work).

    Args:
        seed: initial catalog seed (see :func:`catalog_for_seed`).
        host: address to bind; loopback only (``127.0.0.1`` or ``::1``).
        port: port to bind; 0 picks a free one.
        allow_reset: whether ``POST /reset`` is served (a task may forbid it).
    """

    def __init__(self, seed: int | str = 0, *, host: str = "127.0.0.1", port: int = 0, allow_reset: bool = True):
        if host not in ("127.0.0.1", "::1", "localhost"):
            raise ValueError(f"the inventory service binds to loopback only (127.0.0.1, ::1), got {host!r}")
        if isinstance(port, bool) or not isinstance(port, int) or not 0 <= port < 65536:
            raise ValueError(f"port must be an int in 0..65535 (0 = pick a free port), got {port!r}")
        self._host = host
        self._requested_port = port
        self.allow_reset = allow_reset
        self._lock = threading.Lock()
        self._seed: int | str = seed
        self._items = catalog_for_seed(seed)
        self._orders: list[Order] = []
        self._requests: list[RequestRecord] = []
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None

    # -- lifecycle -----------------------------------------------------------------------------------

    def start(self) -> InventoryService:
        """Bind and serve in a daemon thread; returns self. Starting twice raises RuntimeError."""
        if self._server is not None:
            raise RuntimeError("the inventory service is already running")
        handler = _make_handler(self)
        server_class = _IPv6Server if ":" in self._host else ThreadingHTTPServer
        server = server_class((self._host, self._requested_port), handler)
        server.daemon_threads = True
        self._server = server
        # A short poll interval: stop() (server.shutdown) waits up to one interval, and the env stops a service
        # after every episode (the default 0.5 s made each http episode cost half a second).
        self._thread = threading.Thread(
            target=server.serve_forever, kwargs={"poll_interval": 0.02}, name="inventory-service", daemon=True
        )
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stop serving and release the port (idempotent)."""
        server, self._server = self._server, None
        if server is not None:
            server.shutdown()
            server.server_close()
        if self._thread is not None:
            self._thread.join(timeout=5)
            self._thread = None

    def __enter__(self) -> InventoryService:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    # -- addresses -----------------------------------------------------------------------------------

    @property
    def port(self) -> int:
        """The bound port (only while running)."""
        if self._server is None:
            raise RuntimeError("the inventory service is not running; use it as a context manager or call start()")
        return int(self._server.server_address[1])

    @property
    def host_port(self) -> str:
        """``host:port`` as ``ToolContext.allowed_hosts`` expects it (IPv6 bracketed)."""
        host = f"[{self._host}]" if ":" in self._host else self._host
        return f"{host}:{self.port}"

    @property
    def base_url(self) -> str:
        """``http://host:port`` of the running service."""
        return f"http://{self.host_port}"

    # -- state ---------------------------------------------------------------------------------------

    def state(self) -> InventoryState:
        """A consistent snapshot of items, orders and the request log."""
        with self._lock:
            return InventoryState(
                seed=self._seed,
                items=dict(self._items),
                orders=tuple(self._orders),
                requests=tuple(self._requests),
            )

    def reset(self, seed: int | str) -> None:
        """Regenerate the catalog from ``seed`` and clear the orders (the request log is kept)."""
        items = catalog_for_seed(seed)
        with self._lock:
            self._seed = seed
            self._items = items
            self._orders = []

    # -- request handling (called from the server's threads) --------------------------------------------

    def _log(self, method: str, path: str, status: int) -> None:
        with self._lock:
            self._requests.append(RequestRecord(method=method, path=path, status=status))

    def _get(self, path: str) -> _Reply:
        if path == "/items":
            with self._lock:
                return _Reply(HTTPStatus.OK, {"items": [asdict(item) for item in self._items.values()]})
        if path.startswith("/items/") and path.count("/") == 2:
            sku = unquote(path[len("/items/"):])
            with self._lock:
                item = self._items.get(sku)
            if item is None:
                raise _HttpError(HTTPStatus.NOT_FOUND, f"no item with sku {sku!r}")
            return _Reply(HTTPStatus.OK, asdict(item))
        if path == "/orders":
            with self._lock:
                return _Reply(HTTPStatus.OK, {"orders": [asdict(order) for order in self._orders]})
        raise _HttpError(HTTPStatus.NOT_FOUND, f"no such endpoint: GET {path}")

    def _post(self, path: str, body: Any) -> _Reply:
        if path == "/orders":
            return self._place_order(body)
        if path == "/reset":
            if not self.allow_reset:
                raise _HttpError(HTTPStatus.FORBIDDEN, "reset is disabled for this service")
            if not isinstance(body, dict) or "seed" not in body:
                raise _HttpError(HTTPStatus.BAD_REQUEST, 'body must be {"seed": int | str}')
            seed = body["seed"]
            if isinstance(seed, bool) or not isinstance(seed, (int, str)):
                raise _HttpError(HTTPStatus.BAD_REQUEST, "seed must be an integer or a string")
            self.reset(seed)
            return _Reply(HTTPStatus.OK, {"ok": True, "seed": seed, "items": len(catalog_for_seed(seed))})
        raise _HttpError(HTTPStatus.NOT_FOUND, f"no such endpoint: POST {path}")

    def _place_order(self, body: Any) -> _Reply:
        if not isinstance(body, dict):
            raise _HttpError(HTTPStatus.BAD_REQUEST, 'body must be a JSON object {"sku": str, "qty": int}')
        unknown = sorted(set(body) - {"sku", "qty"})
        if unknown:
            raise _HttpError(HTTPStatus.BAD_REQUEST, f"unexpected field(s) {unknown}; send only sku and qty")
        sku, qty = body.get("sku"), body.get("qty")
        if not isinstance(sku, str):
            raise _HttpError(HTTPStatus.BAD_REQUEST, "sku must be a string")
        if isinstance(qty, bool) or not isinstance(qty, int) or qty < 1:
            raise _HttpError(HTTPStatus.BAD_REQUEST, "qty must be an integer >= 1")
        with self._lock:
            item = self._items.get(sku)
            if item is None:
                raise _HttpError(HTTPStatus.NOT_FOUND, f"no item with sku {sku!r}")
            if item.stock < qty:
                raise _HttpError(
                    HTTPStatus.CONFLICT, "insufficient stock", sku=sku, requested=qty, available=item.stock
                )
            self._items[sku] = replace(item, stock=item.stock - qty)
            order = Order(order_id=len(self._orders) + 1, sku=sku, qty=qty, total_cents=qty * item.price_cents)
            self._orders.append(order)
        return _Reply(HTTPStatus.CREATED, {"order": asdict(order)})


def _make_handler(service: InventoryService) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        server_version = "AMRSDInventory/1.0"

        def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - the base class's name
            # The request log lives in service.state().requests; stderr stays quiet.
            return

        def _send(self, status: HTTPStatus, payload: Any, extra_headers: dict[str, str] | None = None) -> None:
            data = json.dumps(payload).encode("utf-8")
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            for key, value in (extra_headers or {}).items():
                self.send_header(key, value)
            self.end_headers()
            self.wfile.write(data)

        def _handle(self, method: str) -> None:
            path = urlsplit(self.path).path.rstrip("/") or "/"
            try:
                if method == "GET":
                    reply = service._get(path)
                elif method == "POST":
                    reply = service._post(path, self._read_json())
                else:
                    raise _HttpError(
                        HTTPStatus.METHOD_NOT_ALLOWED, f"method {method} is not supported; use GET or POST"
                    )
            except _HttpError as exc:
                reply = _Reply(exc.status, exc.payload)
            service._log(method, path, int(reply.status))
            headers = {"Allow": "GET, POST"} if reply.status == HTTPStatus.METHOD_NOT_ALLOWED else None
            self._send(reply.status, reply.payload, headers)

        def _read_json(self) -> Any:
            length_text = self.headers.get("Content-Length", "0")
            if not length_text.isdigit():
                raise _HttpError(HTTPStatus.BAD_REQUEST, "invalid Content-Length")
            length = int(length_text)
            if length > MAX_BODY_BYTES:
                raise _HttpError(HTTPStatus.REQUEST_ENTITY_TOO_LARGE, f"body larger than {MAX_BODY_BYTES} bytes")
            raw = self.rfile.read(length) if length else b""
            if not raw:
                return None
            try:
                return json.loads(raw)
            except (ValueError, RecursionError):
                raise _HttpError(HTTPStatus.BAD_REQUEST, "body is not valid JSON") from None

        def do_GET(self) -> None:  # noqa: N802 - http.server's naming
            self._handle("GET")

        def do_POST(self) -> None:  # noqa: N802
            self._handle("POST")

        def do_PUT(self) -> None:  # noqa: N802
            self._handle("PUT")

        def do_DELETE(self) -> None:  # noqa: N802
            self._handle("DELETE")

    return Handler
