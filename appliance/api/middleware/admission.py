"""Admission: what an authenticated key may do, checked before a keyed request runs.

In order: the route's audience (its ``RoutePolicy.access``: admin keys manage keys and read
usage, other keys call models; the wrong one is a 403), the key's month (quota and budget,
``key_quota``: a permanent 429 with ``x-should-retry: false``), its concurrency
(``key_concurrency``) and its rate (``key_rate``; transient 429s with ``retry-after``). An
admitted request of a ledgered route gets a durable "started" ledger row; every admitted
request gets its key's model list for the catalog (``key_scope``), and
``x-ratelimit-*-requests`` headers on its response (keys with an rpm limit: every response,
refusals included). Concurrency counts model work: a request whose work outlives its response
(a background response) holds its key's place until that work ends, and requests that call no
model (stored state, usage, the model list) take none. Admission is this door alone: an
engine accepts or queues what it is handed, it does not admit.
"""

from __future__ import annotations

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from appliance.api.errors import error_response, retry_headers
from appliance.api.middleware.key_concurrency import KeyConcurrency
from appliance.api.middleware.key_quota import KeyQuota, MonthTicket
from appliance.api.middleware.key_rate import KeyRate, RateLimitedWithState
from appliance.api.middleware.key_scope import KeyScopedCatalog
from appliance.api.middleware.request_context import commit_row, ledger_row
from appliance.api.note import RequestNote
from appliance.api.route_policy import Access, RoutePolicy, policy_of
from appliance.api.services import LedgerSink
from appliance.errors import ApplianceError, InsufficientQuota, PermissionDenied, RateLimited
from appliance.ledger import KeyRecord


class AdmissionMiddleware:
    def __init__(self, app: ASGIApp, *, rate: KeyRate, concurrency: KeyConcurrency,
                 quota: KeyQuota, catalog: KeyScopedCatalog, ledger: LedgerSink,
                 currency: str, commit_wait: float):
        self.app = app
        self.rate = rate
        self.concurrency = concurrency
        self.quota = quota
        self.catalog = catalog
        self.ledger = ledger
        self.currency = currency
        self.commit_wait = commit_wait

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or not policy_of(scope).needs_key:
            await self.app(scope, receive, send)
            return
        policy = policy_of(scope)
        state = scope["state"]
        key: KeyRecord = state["key"]  # the auth middleware, which runs first, set it
        note: RequestNote = state["note"]
        wrong_audience = _audience_error(key, policy)
        if wrong_audience is not None:
            await self._refuse(note, wrong_audience, {}, scope, receive, send)
            return
        # Concurrency is model work in flight: reading stored state (polling a background
        # response that holds the key's one place, say) takes no place.
        holds_place = policy.kind is not None
        try:
            ticket = await self.quota.admit(key)
            if holds_place:
                self.concurrency.enter(key)
        except InsufficientQuota as error:
            # Permanent until the month turns or the limit is raised: tell the SDKs not to retry.
            headers = {"x-should-retry": "false", **_rate_headers(self.rate, key)}
            await self._refuse(note, error, headers, scope, receive, send)
            return
        except RateLimited as error:
            headers = {**_rate_headers(self.rate, key), **retry_headers(error.retry_after)}
            await self._refuse(note, error, headers, scope, receive, send)
            return
        try:
            try:
                rate_state = self.rate.admit(key)
            except RateLimitedWithState as error:
                headers = {**error.state.headers(), **retry_headers(error.retry_after)}
                await self._refuse(note, error, headers, scope, receive, send)
                return
            if ticket is not None:
                ticket.count()
            extra = rate_state.headers() if rate_state is not None else {}
            await self._run(key, note, policy, extra, ticket, scope, receive, send)
        finally:
            later = note.outlives_response
            if not holds_place:
                pass
            elif later is None or later.done():
                self.concurrency.leave(key)
            else:
                # A background response is in flight until its work ends, not its POST.
                later.add_done_callback(lambda _: self.concurrency.leave(key))

    async def _run(self, key: KeyRecord, note: RequestNote, policy: RoutePolicy,
                   extra: dict[str, str], ticket: MonthTicket | None, scope: Scope,
                   receive: Receive, send: Send) -> None:
        if policy.ledgered:
            await commit_row(self.ledger, ledger_row(note, "started", 0, 0.0, self.currency),
                             self.commit_wait)
        encoded = [(k.encode(), v.encode()) for k, v in extra.items()]

        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                if ticket is not None and message["status"] == 429:
                    ticket.give_back()  # as the ledger's seed leaves 429s out
                if encoded:
                    message = {**message, "headers": [*message.get("headers", []), *encoded]}
            await send(message)

        models = key.limits.models
        token = self.catalog.allowed.set(None if models is None else frozenset(models))
        try:
            await self.app(scope, receive, send_with_headers)
        finally:
            self.catalog.allowed.reset(token)

    async def _refuse(self, note: RequestNote, error: ApplianceError, headers: dict[str, str],
                      scope: Scope, receive: Receive, send: Send) -> None:
        note.error_code = error.code or error.error_type
        await error_response(error, headers)(scope, receive, send)


def _rate_headers(rate: KeyRate, key: KeyRecord) -> dict[str, str]:
    state = rate.peek(key)
    return state.headers() if state is not None else {}


def _audience_error(key: KeyRecord, policy: RoutePolicy) -> PermissionDenied | None:
    admin_route = policy.access is Access.ADMIN
    if admin_route and not key.admin:
        return PermissionDenied(
            "You have insufficient permissions for this operation: the /v1/organization "
            "routes and /metrics need an admin key (`appliance keys create --name NAME "
            "--admin`)."
        )
    if key.admin and not admin_route:
        return PermissionDenied(
            "Admin keys manage keys and read usage; they cannot call models or list them. "
            "Use a regular API key for this request."
        )
    return None
