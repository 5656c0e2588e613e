"""Fixtures for the logs tests."""
import pytest

from apps.logs.request_log import request_buffer


@pytest.fixture(autouse=True)
def empty_request_buffer():
    """Start from an empty request-log buffer (in services mode it is a shared Redis list)."""
    buffer = request_buffer()
    buffer.discard(len(buffer))
    yield
    buffer.discard(len(buffer))
