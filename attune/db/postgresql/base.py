"""PostgreSQL backend: Django's, with connection health checks that skip a connection proven healthy moments ago.

With persistent connections (``CONN_MAX_AGE``) and ``CONN_HEALTH_CHECKS``, Django probes the connection with a
round trip (``SELECT 1``) the first time each request or task uses it. Under load that probe was ~1 ms of CPU
per execution across web, worker and PostgreSQL (about 10 % of the total; docs/performance.md). A connection
that finished its previous request or task without a database error less than ``HEALTHY_SECONDS`` ago is not
probed again: it was healthy then, and the probe exists for connections that sat idle while the server went
away (a restart, an idle timeout), which are exactly the ones older than that. A connection that breaks
within that second fails its first query, Django marks the error and closes it at the end of the request or
task, as it does for a connection that breaks mid-request.
"""
from __future__ import annotations

import time

from django.db.backends.postgresql import base

HEALTHY_SECONDS = 1.0


class DatabaseWrapper(base.DatabaseWrapper):
    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.healthy_at: float | None = None

    def close_if_health_check_failed(self) -> None:
        if (self.connection is not None and self.health_check_enabled and not self.health_check_done
                and self.healthy_at is not None and time.monotonic() - self.healthy_at < HEALTHY_SECONDS):
            self.health_check_done = True
            return
        super().close_if_health_check_failed()

    def close_if_unusable_or_obsolete(self) -> None:
        clean = self.connection is not None and not self.errors_occurred
        super().close_if_unusable_or_obsolete()
        self.healthy_at = time.monotonic() if clean and self.connection is not None else None

    def close(self) -> None:
        self.healthy_at = None
        super().close()
