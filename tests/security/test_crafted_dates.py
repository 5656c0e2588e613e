"""Dates at the ends of the calendar in a query string are a bad request, never a 500: the admin's
date hierarchies and the dashboards' periods work out the end of the day, month or year asked for."""
import pytest
from django.contrib import admin

pytestmark = pytest.mark.django_db

DATE_HIERARCHIES = sorted((model._meta.label_lower, model_admin.date_hierarchy)
                          for model, model_admin in admin.site._registry.items() if model_admin.date_hierarchy)


@pytest.fixture
def root(client, make_user):
    client.force_login(make_user(None, is_staff=True, is_superuser=True))
    return client


def test_every_date_hierarchy_is_found():
    assert len(DATE_HIERARCHIES) >= 6, DATE_HIERARCHIES  # conversations, messages, calls, logs, audit, usage


@pytest.mark.parametrize(("model", "field"), DATE_HIERARCHIES)
@pytest.mark.parametrize("query", ["{f}__year=9999", "{f}__year=9999&{f}__month=12",
                                   "{f}__year=9999&{f}__month=12&{f}__day=31", "{f}__year=+9999",
                                   "{f}__year=99999"])
def test_a_year_past_the_calendar_is_a_bad_lookup_in_the_admin(root, model, field, query):
    url = f"/admin/{model.replace('.', '/')}/"
    response = root.get(f"{url}?{query.format(f=field)}")
    assert (response.status_code, response["Location"]) == (302, f"{url}?e=1")
    assert root.get(f"{url}?{field}__year=9998&{field}__month=12&{field}__day=31").status_code == 200


@pytest.mark.parametrize("page", ["/dashboard/", "/dashboard/cost/", "/dashboard/conversations/",
                                  "/dashboard/errors/"])
def test_a_period_past_the_calendar_is_a_bad_request_on_the_dashboards(root, page):
    for period in ({"from": "9999-12-31", "to": "9999-12-31"}, {"to": "9999-12-31"}):
        response = root.get(page, period)
        assert response.status_code == 400 and "at most 9999-12-30" in response.content.decode(), period
    for period in ({"from": "9999-12-30", "to": "9999-12-30"}, {"from": "0001-01-01", "to": "0001-01-01"},
                   {"to": "0001-01-05"}):
        assert root.get(page, period).status_code == 200, period
