"""What a route is to the layers around it, declared once beside it in the route table.

Each route of ``app.py`` carries a ``RoutePolicy``: who may call it (no key, a key that calls
models, an admin key), whether it writes a ledger row, which kind of model it serves (the
ledger row records it, and the usage reports group by it), how a stream it sends ends when the
server cuts it, and whether it is a probe that the drain and the failed-auth gate let through.
The request context resolves the policy of each request once (``RouteTable.policy_for``) and
leaves it in the scope; the middlewares, the drain and the usage reports read it from there
(``policy_of``) instead of matching path strings of their own.
"""

from __future__ import annotations

import enum
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from starlette.routing import BaseRoute, Match, Route
from starlette.types import Scope


class Access(enum.Enum):
    OPEN = "open"  # no key (probes, the playground's files, image URLs, the API document)
    KEY = "key"  # a regular key: calls models and reads its own usage
    ADMIN = "admin"  # an admin key: manages keys, reads the organization's usage, /metrics


@dataclass(frozen=True)
class RoutePolicy:
    access: Access
    ledgered: bool  # one ledger row per request (every route that takes a key)
    kind: str | None = None  # the model kind it serves (engines.base Kind.name); None: no model
    ends_with_done: bool = False  # a cut event stream ends with `data: [DONE]` (chat, completions)
    drains: bool = True  # False: still served while the server drains (the liveness probe)
    gated: bool = True  # False: the failed-auth gate never turns it away (the probes)

    @property
    def needs_key(self) -> bool:
        return self.access is not Access.OPEN


OPEN = RoutePolicy(Access.OPEN, ledgered=False)
LIVENESS = RoutePolicy(Access.OPEN, ledgered=False, drains=False, gated=False)
READINESS = RoutePolicy(Access.OPEN, ledgered=False, gated=False)
KEYED = RoutePolicy(Access.KEY, ledgered=True)
ADMIN = RoutePolicy(Access.ADMIN, ledgered=True)


def serving(kind: str, *, ends_with_done: bool = False) -> RoutePolicy:
    """A route that calls a model of ``kind`` with a regular key."""
    return RoutePolicy(Access.KEY, ledgered=True, kind=kind, ends_with_done=ends_with_done)


class PolicyRoute(Route):
    """A starlette Route that carries its policy."""

    def __init__(self, path: str, endpoint: Callable[..., Any], *, methods: list[str],
                 policy: RoutePolicy, name: str | None = None):
        super().__init__(path, endpoint, methods=methods, name=name)
        self.policy = policy


def route(path: str, endpoint: Callable[..., Any], method: str, policy: RoutePolicy,
          name: str | None = None) -> PolicyRoute:
    return PolicyRoute(path, endpoint, methods=[method], policy=policy, name=name)


def with_policy(routes: Iterable[Route], policy: RoutePolicy) -> list[PolicyRoute]:
    """Plain routes (as a resource module lists them) under one policy."""
    return [PolicyRoute(r.path, r.endpoint, methods=sorted(r.methods or ()), policy=policy,
                        name=r.name) for r in routes]


class RouteTable:
    """The policies of the app's routes, found for a request the way starlette finds its
    route (a path that matches with another method still has the path's policy); a path no
    route has gets ``unmatched(path)``."""

    def __init__(self, routes: Sequence[BaseRoute], unmatched: Callable[[str], RoutePolicy]):
        self._routes = [r for r in routes if isinstance(r, PolicyRoute)]
        missing = [getattr(r, "path", repr(r)) for r in routes if not isinstance(r, PolicyRoute)]
        if missing:
            raise TypeError(f"routes without a policy: {missing}; declare each with "
                            "route_policy.route(path, endpoint, method, policy)")
        self._unmatched = unmatched

    def policy_for(self, scope: Scope) -> RoutePolicy:
        partial: RoutePolicy | None = None
        for candidate in self._routes:
            match, _ = candidate.matches(scope)
            if match is Match.FULL:
                return candidate.policy
            if match is Match.PARTIAL and partial is None:
                partial = candidate.policy
        return partial if partial is not None else self._unmatched(scope["path"])


def policy_of(scope: Scope) -> RoutePolicy:
    """The policy the request context resolved for this request."""
    policy: RoutePolicy = scope["state"]["policy"]
    return policy
