"""Helpers for the traffic and spend tests: API clients per user, policies, a web chat socket."""
from __future__ import annotations

import pytest
from rest_framework.test import APIClient

from apps.identities.models import ApiKey
from apps.quotas.models import QuotaPolicy


@pytest.fixture
def key_client():
    """An APIClient authenticated with a new key of ``user``; returns (client, ApiKey row)."""

    def make(user, *, remote_addr="127.0.0.1", **extra):
        key, raw = ApiKey.generate(user=user, name="test")
        client = APIClient(REMOTE_ADDR=remote_addr, **extra)
        client.credentials(HTTP_AUTHORIZATION=f"Bearer {raw}")
        return client, key

    return make


@pytest.fixture
def policy(db):
    def make(scope, target=None, **limits):
        fields = {"scope": scope, **limits}
        if scope == "role":
            fields["role"] = target
        elif target is not None:
            fields[scope] = target
        return QuotaPolicy.objects.create(**fields)

    return make
