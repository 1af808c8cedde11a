"""Connect to the Ray cluster the platform runs on.

RAY_ADDRESS (set by `llamaline up` for its worker, or by the user for a real cluster) wins; when
it is unset or nothing answers there, a private local Ray is started so the same flow runs on a
laptop. ``address="local"`` is explicit on purpose: a stale ``ray_current_cluster`` file would
otherwise make Ray try a cluster that is gone.
"""

from __future__ import annotations

import logging
import os
import socket

import ray

log = logging.getLogger(__name__)
PROBE_SECONDS = 3.0


def _gcs_answers(address: str) -> bool:
    host, _, port = address.rpartition(":")
    try:
        with socket.create_connection((host or "127.0.0.1", int(port)), timeout=PROBE_SECONDS):
            return True
    except (OSError, ValueError):
        return False


def ensure_ray(address: str | None = None) -> str:
    """Initialise Ray once per process; return a description of where it runs."""
    if ray.is_initialized():
        return "already connected"
    address = address or os.environ.get("RAY_ADDRESS")
    if address and (address.startswith("ray://") or address == "auto" or _gcs_answers(address)):
        ray.init(address=address, log_to_driver=True)
        return f"cluster at {address}"
    if address:
        log.warning("no Ray cluster answers at RAY_ADDRESS=%s; starting a local Ray instead", address)
    ray.init(address="local", include_dashboard=False)
    return "local Ray"
