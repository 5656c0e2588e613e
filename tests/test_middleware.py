"""Which paths serve programs (no session, CSRF or flash messages in async mode); the behaviour
under Daphne is tested end to end in tests/e2e/test_middleware_e2e.py."""
from gateway_project.middleware import serves_programs


def test_which_paths_serve_programs():
    assert all(serves_programs(p) for p in ("/api/v1/messages", "/v1/chat/completions", "/healthz", "/metrics"))
    assert not any(serves_programs(p) for p in ("/admin/", "/dashboard/", "/chat/web/", "/apix", "/v1x"))
