"""The staff dashboards at ``/dashboard/``: overview, cost, conversations, errors and security.

Who: active staff with the ``logs.view_dashboard`` permission (or in the admin role). Anyone else
who is signed in gets 403; anonymous visitors are sent to the login page. Every page takes a date
range (``from``/``to``, YYYY-MM-DD, inclusive) and every table exports as CSV (``?export=<table>``).
"""
from __future__ import annotations

import csv
import functools
import json
from datetime import date, timedelta
from urllib.parse import urlencode

from django.contrib.auth.views import redirect_to_login
from django.http import Http404, HttpResponse
from django.shortcuts import render
from django.utils import timezone
from django.views.decorators.http import require_GET

from apps.agents.models import Agent
from apps.connectors.models import Channel
from apps.conversations.models import Status
from apps.identities.channel_scope import request_agent_ids, request_channel_ids, sees_every_channel
from apps.identities.permissions import role_rank, staff_may_act
from apps.identities.roles import ROLE_ORDER, Role

from . import selectors
from .selectors import Filters, Period

DASHBOARD_PERMISSION = "logs.view_dashboard"
AUDIT_PERMISSION = "logs.view_auditevent"  # the audit log, as in the admin
DEFAULT_PERIOD_DAYS = 14
LAST_DAY = date.max - timedelta(days=1)  # the last whose bounds (until the next midnight) a datetime holds
MAX_PERIOD_DAYS = 366
PAGE_ROWS = 50
MAX_PAGE = 100_000
# Filters that follow the staff member from page to page (nav links) and into the CSV export.
FILTER_KEYS = ("channel", "agent", "model", "user", "status")
NO_SUCH_SLUG = "/"  # no slug holds a slash: a filter that matches nothing
STATUSES = (Status.ACCEPTED, Status.PROCESSING, Status.ANSWERED, Status.FAILED)


def dashboard_allowed(user) -> bool:
    """Staff only, and permission-checked: the explicit permission, or the admin role."""
    if not staff_may_act(user):
        return False
    return user.has_perm(DASHBOARD_PERMISSION) or role_rank(user) >= ROLE_ORDER.index(Role.ADMIN)


def staff_dashboard(view):
    @functools.wraps(view)
    def wrapper(request, *args, **kwargs):
        if not request.user.is_authenticated:
            return redirect_to_login(request.get_full_path())
        if not dashboard_allowed(request.user):
            return render(request, "dashboard/refused.html", status=403)
        try:
            check_query(request)
            return view(request, *args, **kwargs)
        except BadInput as error:
            return render(request, "dashboard/refused.html", {"reason": str(error)}, status=400)
    return require_GET(wrapper)


class BadInput(ValueError):
    """A query parameter the dashboard cannot use (shown to the staff member, status 400)."""


def check_query(request) -> None:
    """Filters end up in SQL, and PostgreSQL refuses a NUL in text (a 500): refuse it here, once."""
    for key, values in request.GET.lists():
        if any("\x00" in value for value in (key, *values)):
            raise BadInput("The query holds a NUL character.")


def period_from(request) -> Period:
    today = timezone.localdate()
    try:
        end = date.fromisoformat(request.GET["to"]) if request.GET.get("to") else today
        start = (date.fromisoformat(request.GET["from"]) if request.GET.get("from")
                 else end - min(timedelta(days=DEFAULT_PERIOD_DAYS - 1), end - date.min))  # not before year 1
    except ValueError as exc:
        raise BadInput("Dates must look like 2026-01-31.") from exc
    if end > LAST_DAY:
        raise BadInput(f"Dates must be at most {LAST_DAY}.")
    if start > end:
        raise BadInput("The start date is after the end date.")
    if (end - start).days >= MAX_PERIOD_DAYS:
        raise BadInput(f"Choose at most {MAX_PERIOD_DAYS} days.")
    return Period(start, end)


def filters_from(request) -> Filters:
    values = {k: request.GET.get(k, "").strip() for k in FILTER_KEYS}
    if values["status"] and values["status"] not in STATUSES:
        raise BadInput("Unknown status.")
    # A channel or agent she may not use matches nothing, as one that does not exist does: its
    # totals would say it exists.
    visible = visible_to(request)
    for key, model, ids in (("channel", Channel, visible.channels), ("agent", Agent, visible.agents)):
        if values[key] and ids is not None and not model.objects.filter(pk__in=ids, slug=values[key]).exists():
            values[key] = NO_SUCH_SLUG
    return Filters(**values)


def visible_to(request) -> selectors.Visible:
    """The channels and agents the staff member may use (None: every one, a superuser). What was
    said, the errors of model calls and the refused requests are shown only on those channels (as
    in the console and the admin), and only those are named; counts and costs stay whole."""
    if sees_every_channel(request.user):
        return selectors.Visible()
    return selectors.Visible(frozenset(request_channel_ids(request)), frozenset(request_agent_ids(request)))


def render_page(request, template: str, period: Period | None, context: dict):
    """Render a dashboard page, or one of its tables as CSV when ``?export=<name>`` is given."""
    export = request.GET.get("export")
    if export:
        table = next((t for t in context.get("tables", []) if t.name == export), None)
        if table is None:
            raise BadInput(f"No table named {export!r} on this page.")
        return csv_response(table, period)
    own_fields = context.get("filters", {})
    applied = context.get("applied", set(FILTER_KEYS))
    context.update({
        "unapplied_filters": [k for k in FILTER_KEYS if request.GET.get(k) and k not in applied],
        "nav_query": carried_query(request),
        # Filters this page has no field for ride along in its form, so "Apply" keeps them.
        "hidden_filters": [(k, request.GET[k]) for k in FILTER_KEYS if request.GET.get(k) and k not in own_fields],
        "live": period is not None and period.start <= timezone.localdate() <= period.end,
        "period": period,
        "charts_config": [c.config() for c in context.get("charts", [])],
        "query": request.GET.urlencode(),
        "nav": NAV,
        "active": request.resolver_match.url_name,
    })
    return render(request, template, context)


def carried_query(request) -> str:
    """The period and filters, as a query string for links to the other pages."""
    return urlencode({k: request.GET[k] for k in ("from", "to", *FILTER_KEYS) if request.GET.get(k)})


def csv_response(table, period: Period | None) -> HttpResponse:
    suffix = f"-{period.start}-{period.end}" if period else ""
    response = HttpResponse(content_type="text/csv; charset=utf-8")
    response["Content-Disposition"] = f'attachment; filename="{table.name}{suffix}.csv"'
    writer = csv.writer(response)
    writer.writerow([heading for _key, heading in table.columns])
    for row in table.rows:
        writer.writerow([_csv_cell(row.get(key)) for key, _heading in table.columns])
    return response


def _csv_cell(value):
    if value is None:
        return ""
    if isinstance(value, dict | list):
        return json.dumps(value, default=str)
    text = str(value)
    # A cell starting with =, +, - or @ would be run as a formula by spreadsheet programs.
    return "'" + text if text[:1] in ("=", "+", "-", "@") and not _is_number(text) else text


def _is_number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


NAV = [("dashboard-overview", "Overview"), ("dashboard-cost", "Cost"),
       ("dashboard-conversations", "Conversations"), ("dashboard-errors", "Errors & security")]


@staff_dashboard
def overview(request):
    period = period_from(request)
    return render_page(request, "dashboard/overview.html", period,
                       selectors.overview(period, filters_from(request), visible_to(request)))


@staff_dashboard
def cost(request):
    period = period_from(request)
    return render_page(request, "dashboard/cost.html", period,
                       selectors.cost(period, filters_from(request), visible_to(request)))


@staff_dashboard
def conversations(request):
    period = period_from(request)
    try:
        page = max(1, int(request.GET.get("page") or 1))
    except ValueError as exc:
        raise BadInput("page must be a number.") from exc
    if page > MAX_PAGE:  # the offset must fit the database's integers
        raise BadInput(f"page must be at most {MAX_PAGE}.")
    filters = filters_from(request)
    export = bool(request.GET.get("export"))
    visible = visible_to(request)
    table = selectors.conversation_search(
        period, user=filters.user, channel=filters.channel, text=request.GET.get("text", "").strip(),
        status=filters.status, agent=filters.agent, model=filters.model,
        limit=selectors.GROUP_ROWS * 10 if export else PAGE_ROWS, offset=0 if export else (page - 1) * PAGE_ROWS,
        channel_ids=visible.channels, agent_ids=visible.agents,
    )
    # The filters offer the channels and agents she may use, as the admin's do (scoped_pickers).
    channels, agents = Channel.objects.all(), Agent.objects.all()
    if visible.channels is not None:
        channels, agents = channels.filter(pk__in=visible.channels), agents.filter(pk__in=visible.agents)

    carried = carried_query(request)
    if carried:  # opening a conversation keeps the filters for the way back
        for row in table.rows:
            row["url"] += "?" + carried
    return render_page(request, "dashboard/conversations.html", period, {
        "tables": [table], "page": page, "has_next": len(table.rows) == PAGE_ROWS,
        "channels": list(channels.values_list("slug", flat=True)),
        "statuses": STATUSES,
        "agents": list(agents.order_by("slug").values_list("slug", flat=True)),
        "filters": {k: request.GET.get(k, "") for k in ("user", "channel", "text", "status", "agent", "model")},
    })


@staff_dashboard
def conversation(request, conversation_id):
    visible = visible_to(request)
    detail = selectors.conversation_detail(conversation_id, channel_ids=visible.channels,
                                           audit_log=request.user.has_perm(AUDIT_PERMISSION),
                                           agent_ids=visible.agents)
    if detail is None:
        raise Http404("No such conversation.")
    return render_page(request, "dashboard/conversation.html", None, detail)


@staff_dashboard
def errors(request):
    period = period_from(request)
    visible = visible_to(request)
    return render_page(request, "dashboard/errors.html", period, selectors.errors_and_security(
        period, action=request.GET.get("action", "").strip(), filters=filters_from(request),
        channel_ids=visible.channels, audit_log=request.user.has_perm(AUDIT_PERMISSION),
        agent_ids=visible.agents))
