"""The composition root: config -> ledger -> engines -> api.create_app -> uvicorn.

Models load and warm before the socket opens, so the first request the server accepts is
served as fast as the hundredth. uvicorn serves through the appliance's own h11 protocol
(``api/middleware/connections.py``: connection cap, header and body deadlines), and trusts
proxy headers only from ``[server] trusted_proxies``: its default trusts ``X-Forwarded-For``
from loopback, which would let any local client pick the address its failed authentications
count against.
"""

from __future__ import annotations

import logging
import time

import uvicorn

from appliance.api.app import create_app
from appliance.api.bounds import RequestBounds
from appliance.api.image_fetch import ImageFetcher
from appliance.api.image_files import ImageFiles
from appliance.api.middleware.connections import EdgeBounds, edge_protocol, ensure_file_limit
from appliance.api.middleware.drain import DrainingServer, DrainState
from appliance.api.reasoning_seal import ReasoningSeal
from appliance.api.services import Exposure, Pricing, Services
from appliance.api.telemetry.metrics import ApplianceMetrics
from appliance.config import ApplianceConfig, TranscriptionModelConfig
from appliance.engines.loader import load_catalog
from appliance.ledger import KeyStore, LedgerReports, LedgerWriter
from appliance.store import DAY_SECONDS, MIB, SqliteStateStore, StoreBounds

log = logging.getLogger("appliance.server")


def serve(config: ApplianceConfig) -> None:
    boot_started = time.perf_counter()
    server_config = config.server
    server_config.data_dir.mkdir(parents=True, exist_ok=True)
    ledger = LedgerWriter(server_config.ledger_path)
    ledger.start()
    keys = KeyStore(server_config.keys_path)
    # Its own file beside the ledger: what clients keep, apart from what they were charged.
    state = SqliteStateStore(
        server_config.data_dir / "state.sqlite",
        retention_s=server_config.response_retention_days * DAY_SECONDS,
        bounds=StoreBounds(max_owner_bytes=server_config.max_stored_mb_per_key * MIB,
                           max_conversation_items=server_config.max_conversation_items))
    # The key of the reasoning's encrypted_content: made on first boot, the same ever after.
    reasoning_seal = ReasoningSeal.from_key_file(server_config.data_dir / "reasoning-seal.key")
    metrics = ApplianceMetrics(ledger_lag=lambda: ledger.lag_seconds)
    drain = DrainState()
    try:
        catalog = load_catalog(config, on_step=metrics.observe_step,
                               on_occupancy=metrics.observe_occupancy)
        try:
            services = Services(
                catalog=catalog,
                ledger=ledger,
                keys=keys,
                key_admin=keys,
                reports=LedgerReports(server_config.ledger_path),
                pricing=Pricing(
                    per_request={m.id: m.price_per_request for m in config.models},
                    currency=server_config.currency,
                ),
                bounds=RequestBounds(
                    max_body_bytes=server_config.max_body_mb * 1024 * 1024,
                    max_upload_bytes=max((m.max_upload_mb * 1024 * 1024 for m in config.models
                                          if isinstance(m, TranscriptionModelConfig)),
                                         default=RequestBounds().max_upload_bytes)),
                state=state,
                reasoning_seal=reasoning_seal,
                image_fetch=ImageFetcher(
                    hosts=frozenset(server_config.remote_image_hosts),
                    max_bytes=server_config.remote_image_max_mb * 1024 * 1024,
                    timeout_s=server_config.remote_image_timeout_s)
                if server_config.remote_image_hosts else None,
                image_files=ImageFiles(server_config.data_dir / "images",
                                       ttl_s=server_config.image_url_ttl_s,
                                       public_url=server_config.public_url),
                exposure=Exposure(metrics_public=server_config.metrics_public,
                                  cors_origins=server_config.cors_origins),
                reasoning_field=server_config.reasoning_field,
                metrics=metrics,
                drain=drain,
            )
            app = create_app(services)
            tls = server_config.tls_certfile is not None
            log.info("boot to ready in %.2fs; serving %s on %s://%s:%d",
                     time.perf_counter() - boot_started,
                     ", ".join(m.id for m in config.models),
                     "https" if tls else "http", server_config.host, server_config.port)
            # log_config=None: uvicorn's lines go through the handler configure_logging set up
            # (text or JSON, with request ids). Its own graceful timeout only has to cancel
            # what outlived our drain (DrainingServer), so it is short.
            edge = EdgeBounds(max_connections=server_config.max_connections,
                              header_timeout_s=server_config.header_timeout_s,
                              body_timeout_s=server_config.body_timeout_s)
            ensure_file_limit(edge)
            proxies = list(server_config.trusted_proxies)
            uvicorn_config = uvicorn.Config(
                app, host=server_config.host, port=server_config.port,
                log_level=server_config.log_level, access_log=False, log_config=None,
                ssl_certfile=server_config.tls_certfile, ssl_keyfile=server_config.tls_keyfile,
                timeout_graceful_shutdown=1, http=edge_protocol(edge),
                h11_max_incomplete_event_size=services.bounds.max_header_bytes,
                proxy_headers=bool(proxies), forwarded_allow_ips=proxies or None)
            DrainingServer(uvicorn_config, drain, server_config.shutdown_grace_s).run()
        finally:
            for engine in catalog.engines():
                engine.close()
    finally:
        # The state store after the server stopped (no request writes any more), before the
        # ledger, like it a file whose last writes must land.
        state.close()
        ledger.close()
        keys.close()
