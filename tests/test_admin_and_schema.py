"""The admin pages staff use, and the published OpenAPI schema."""
import pytest
from django.urls import reverse

from apps.conversations import pipeline
from apps.conversations.normalized import NormalizedMessage
from apps.identities.models import ApiKey


@pytest.fixture
def staff_client(client, admin_user):
    admin_user.is_superuser = True
    admin_user.save()
    client.force_login(admin_user)
    return client


@pytest.mark.django_db
def test_every_admin_changelist_opens(staff_client, api_channel, customer):
    from django.contrib import admin

    pipeline.accept(NormalizedMessage(channel="api", channel_id="api", user_id="x", message="hi"),
                    channel=api_channel, principal=customer)
    for model in admin.site._registry:
        url = reverse(f"admin:{model._meta.app_label}_{model._meta.model_name}_changelist")
        assert staff_client.get(url).status_code == 200, url


@pytest.mark.django_db
def test_a_nul_in_an_admin_query_is_a_400_not_a_500(staff_client):
    """A list filter's value goes into SQL, and PostgreSQL refuses a NUL in text."""
    for query in ("role=%00", "scope=user&role=a%00b", "%00=1"):
        assert staff_client.get(f"/admin/quotas/quotapolicy/?{query}").status_code == 400, query
    assert staff_client.get("/admin/quotas/quotapolicy/?role=customer").status_code == 200


@pytest.mark.django_db
def test_an_action_on_an_id_that_is_no_uuid_is_a_400_not_a_500(staff_client, customer):
    """The admin's actions look up the selected ids as they come: a user's id must be a UUID."""
    for ids in (["not-a-uuid"], [str(customer.pk), "1"]):
        response = staff_client.post("/admin/identities/user/", {"action": "delete_selected", "_selected_action": ids})
        assert response.status_code == 400, ids
    response = staff_client.post("/admin/identities/user/", {"action": "delete_selected",
                                                             "_selected_action": [str(customer.pk)]})
    assert response.status_code == 200 and customer.username in response.content.decode()  # the confirmation


@pytest.mark.django_db
def test_the_400_for_an_id_that_is_no_uuid_is_plain_text(staff_client):
    """The 400 quotes the value posted: served as HTML, a value holding markup ran as a script."""
    response = staff_client.post("/admin/identities/user/", {"action": "delete_selected",
                                                             "_selected_action": ["<script>alert(1)</script>"]})
    assert response.status_code == 400
    assert response["Content-Type"].startswith("text/plain"), response["Content-Type"]


@pytest.mark.django_db
def test_conversation_page_shows_its_messages_in_order(staff_client, api_channel, customer):
    first = pipeline.accept(NormalizedMessage(channel="api", channel_id="api", user_id="x", message="first words"),
                            channel=api_channel, principal=customer)
    pipeline.accept(NormalizedMessage(channel="api", channel_id="api", user_id="x", message="second words",
                                      conversation_id=str(first.conversation.pk)),
                    channel=api_channel, principal=customer)
    page = staff_client.get(reverse("admin:conversations_conversation_change", args=[first.conversation.pk]))
    html = page.content.decode()
    assert page.status_code == 200
    assert html.index("first words") < html.index("second words")


@pytest.mark.django_db
def test_api_key_admin_never_shows_the_hash(staff_client, customer):
    key, raw = ApiKey.generate(user=customer)
    page = staff_client.get(reverse("admin:identities_apikey_change", args=[key.pk])).content.decode()
    assert key.key_hash not in page and raw not in page
    assert f"gw_{key.prefix}_" in page


@pytest.mark.django_db
def test_customers_cannot_open_the_admin(client, customer):
    client.force_login(customer)
    assert client.get("/admin/").status_code == 302


@pytest.mark.django_db
def test_openapi_schema_lists_the_public_api(client):
    response = client.get("/api/v1/schema", HTTP_ACCEPT="application/json")
    assert response.status_code == 200
    schema = response.json()
    assert {"/api/v1/messages", "/api/v1/conversations/{conversation_id}/messages"} <= set(schema["paths"])
    post = schema["paths"]["/api/v1/messages"]["post"]
    assert {"200", "202", "400", "401", "429", "504"} <= set(post["responses"])
    docs = client.get("/api/v1/docs").content.decode()
    assert "swagger-ui" in docs and "cdn" not in docs.lower()  # served locally: works offline
