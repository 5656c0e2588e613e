"""The admin, the dashboards and the staff tools link to each other; long commands show progress;
the Grafana dashboard charts metrics the gateway really exports."""
import json
import re
from datetime import timedelta
from io import StringIO
from pathlib import Path

import pytest
from django.core.management import call_command
from django.utils import timezone

from apps.logs.models import AuditEvent, DailyMessageStats

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def staff_client(client, admin_user):
    client.force_login(admin_user)
    return client


@pytest.mark.django_db
def test_admin_index_is_the_gateway_and_links_the_staff_tools(staff_client, webchat_channel):
    page = staff_client.get("/admin/").content.decode()
    assert "<title>Administration | Agent Gateway</title>" in page
    assert "Django administration" not in page
    for href in ('href="/dashboard/"', 'href="/api/v1/docs"', f'href="/chat/{webchat_channel.slug}/"'):
        assert href in page


@pytest.mark.django_db
def test_dashboards_link_back_to_the_admin(staff_client):
    page = staff_client.get("/dashboard/").content.decode()
    assert 'href="/admin/"' in page and 'href="/api/v1/docs"' in page


@pytest.mark.django_db
def test_seed_demo_json_stays_pure_json_with_progress_on_stderr():
    out, err = StringIO(), StringIO()
    call_command("seed_demo", "--json", stdout=out, stderr=err)
    assert json.loads(out.getvalue())["channels"]["webchat"]["slug"]
    assert "seed_demo:" in err.getvalue()


@pytest.mark.django_db
def test_rollup_command_reports_each_day(webchat_channel):
    out, err = StringIO(), StringIO()
    call_command("rollup_logs", "--days", "3", stdout=out, stderr=err)
    today = timezone.localdate()
    lines = err.getvalue().splitlines()
    assert lines[-1] == f"[3/3] rolled up {today.isoformat()}"
    assert lines[0] == f"[1/3] rolled up {(today - timedelta(days=2)).isoformat()}"
    assert DailyMessageStats.objects.count() == 0  # no traffic: rebuilt as empty, not invented


@pytest.mark.django_db
def test_purge_command_reports_batches(settings, admin_user):
    settings.GATEWAY_AUDIT_RETENTION_DAYS = 1
    old = AuditEvent.objects.create(action="test.old", actor=admin_user)
    AuditEvent.objects.filter(pk=old.pk).update(created_at=timezone.now() - timedelta(days=5))
    out, err = StringIO(), StringIO()
    call_command("purge_logs", stdout=out, stderr=err)
    assert "1 row(s) deleted so far" in err.getvalue()
    assert "audit_events: 1" in out.getvalue()
    assert not AuditEvent.objects.filter(pk=old.pk).exists()


def test_grafana_dashboard_charts_exported_metric_names():
    dashboard = json.loads((ROOT / "deploy/grafana/agent-gateway.json").read_text())
    exprs = [t["expr"] for panel in dashboard["panels"] for t in panel["targets"]]
    sources = "".join((ROOT / p).read_text() for p in (
        "apps/logs/metrics.py", "apps/quotas/metrics.py", "apps/agents/dispatch.py"))
    names = {re.sub(r"_(total|bucket)$", "", n) for e in exprs for n in re.findall(r"gateway_[a-z_]+", e)}
    assert len(names) >= 8
    for name in names:
        assert f'"{name}' in sources, name
