"""Django's PostgreSQL backend; its connection pool checks a lent connection with CheckUnlessRecent.

Django gives the pool psycopg's ``check_connection`` (a round trip on every borrow) when
CONN_HEALTH_CHECKS is on, and passes ``check`` itself, so it cannot come from the pool options.
This engine replaces it, once, on the pool Django builds (psycopg_pool keeps it as ``_check``;
tests/test_pool_check.py fails if that changes).
"""
from __future__ import annotations

from django.conf import settings
from django.db.backends.postgresql import base

from gateway_project.pool_check import CheckUnlessRecent


class DatabaseWrapper(base.DatabaseWrapper):
    @property
    def pool(self):
        new = self.alias not in self._connection_pools
        pool = super().pool
        if pool is not None and new and self.settings_dict["CONN_HEALTH_CHECKS"]:
            pool._check = CheckUnlessRecent(settings.DATABASE_POOL_CHECK_SECONDS)
        return pool
