"""The composition root: config -> ledger -> engines -> api.create_app -> uvicorn.

Models load and warm before the socket opens, so the first request the server accepts is
served as fast as the hundredth.
"""

from __future__ import annotations

import logging
import time

import uvicorn

from appliance.api.app import create_app
from appliance.api.images_files import ImageFiles
from appliance.api.services import Limits, Pricing, Services
from appliance.config import ApplianceConfig
from appliance.engines.loader import load_catalog
from appliance.ledger import KeyStore, LedgerReports, LedgerWriter

log = logging.getLogger("appliance.server")


def serve(config: ApplianceConfig) -> None:
    boot_started = time.perf_counter()
    server_config = config.server
    server_config.data_dir.mkdir(parents=True, exist_ok=True)
    ledger = LedgerWriter(server_config.ledger_path)
    ledger.start()
    keys = KeyStore(server_config.keys_path)
    try:
        catalog = load_catalog(config)
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
                limits=Limits(max_upload_bytes=max(
                    (m.max_upload_mb * 1024 * 1024 for m in config.models
                     if m.kind == "transcription"), default=Limits().max_upload_bytes)),
                image_files=ImageFiles(server_config.data_dir / "images",
                                       ttl_s=server_config.image_url_ttl_s),
            )
            app = create_app(services)
            log.info("boot to ready in %.2fs; serving %s on http://%s:%d",
                     time.perf_counter() - boot_started,
                     ", ".join(m.id for m in config.models),
                     server_config.host, server_config.port)
            uvicorn.run(app, host=server_config.host, port=server_config.port,
                        log_level=server_config.log_level, access_log=False)
        finally:
            for engine in catalog.engines():
                engine.close()
    finally:
        ledger.close()
        keys.close()
