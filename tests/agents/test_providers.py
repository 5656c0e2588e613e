"""Provider presets and the write-only, encrypted API key."""
import pytest

from apps.agents.llm import pools_for
from apps.agents.models import Provider

SECRET = "sk-test-very-secret-value-123"


@pytest.mark.django_db
class TestPresets:
    @pytest.mark.parametrize("preset, base_url, env", [
        ("openai", "https://api.openai.com/v1", "OPENAI_API_KEY"),
        ("qwen", "https://dashscope.aliyuncs.com/compatible-mode/v1", "DASHSCOPE_API_KEY"),
        ("glm", "https://open.bigmodel.cn/api/paas/v4", "ZHIPUAI_API_KEY"),
    ])
    def test_preset_fills_base_url_and_key_variable(self, preset, base_url, env):
        provider = Provider(slug=preset, name=preset, preset=preset)
        provider.full_clean()
        assert provider.base_url == base_url and provider.api_key_env == env

    def test_preset_keeps_what_staff_typed(self):
        provider = Provider(slug="q", name="q", preset="qwen", base_url="https://dashscope-intl.aliyuncs.com/compatible-mode/v1")
        provider.full_clean()
        assert provider.base_url.startswith("https://dashscope-intl.")

    def test_custom_needs_a_base_url(self):
        from django.core.exceptions import ValidationError

        with pytest.raises(ValidationError):
            Provider(slug="c", name="c", preset="custom").full_clean()

    def test_key_from_the_named_environment_variable(self, monkeypatch):
        monkeypatch.setenv("DASHSCOPE_API_KEY", "from-env")
        provider = Provider(slug="q", name="q", preset="qwen")
        provider.full_clean()
        assert provider.api_key() == "from-env"


@pytest.mark.django_db
class TestEncryptedKey:
    def test_stored_encrypted_and_preferred_over_the_environment(self, provider, monkeypatch):
        monkeypatch.setenv("OPENAI_API_KEY", "from-env")
        provider.set_api_key(SECRET)
        provider.save()
        row = Provider.objects.get(pk=provider.pk)
        assert SECRET not in row.api_key_encrypted and row.api_key_encrypted
        assert row.api_key() == SECRET
        with pools_for(row).lease() as client:
            assert client.api_key == SECRET

    def test_admin_sets_it_write_only_and_never_shows_it(self, client, admin_user, provider, caplog):
        admin_user.is_superuser = True
        admin_user.save()
        client.force_login(admin_user)
        url = f"/admin/agents/provider/{provider.pk}/change/"
        form = {"slug": provider.slug, "name": provider.name, "preset": "custom", "base_url": provider.base_url,
                "api_key_env": "", "timeout_seconds": "10", "enabled": "on", "new_api_key": SECRET}
        response = client.post(url, form)
        assert response.status_code == 302
        provider.refresh_from_db()
        assert provider.api_key() == SECRET
        page = client.get(url).content.decode()
        assert SECRET not in page and provider.api_key_encrypted not in page
        assert SECRET not in caplog.text
        # Saving again without typing a key keeps it; the checkbox clears it.
        client.post(url, {**form, "new_api_key": ""})
        provider.refresh_from_db()
        assert provider.api_key() == SECRET
        client.post(url, {**form, "new_api_key": "", "clear_api_key": "on"})
        provider.refresh_from_db()
        assert provider.api_key_encrypted == ""

    def test_wrong_encryption_key_is_a_clear_configuration_error(self, provider, settings):
        from cryptography.fernet import Fernet
        from django.core.exceptions import ImproperlyConfigured

        provider.set_api_key(SECRET)
        settings.FIELD_ENCRYPTION_KEY = Fernet.generate_key().decode()
        with pytest.raises(ImproperlyConfigured):
            provider.api_key()


@pytest.mark.django_db
class TestKeyVariableAllowList:
    def test_only_api_key_shaped_names_are_accepted(self):
        from django.core.exceptions import ValidationError

        for name in ("SECRET_KEY", "DATABASE_URL", "REDIS_URL", "openai_api_key", "X_API_KEY_OLD"):
            with pytest.raises(ValidationError):
                Provider(slug="p", name="p", base_url="http://x.example/v1", api_key_env=name).full_clean()
        Provider(slug="p", name="p", base_url="http://x.example/v1", api_key_env="MY_API_KEY").full_clean()

    def test_the_setting_decides(self, settings):
        from apps.agents.models import key_env_allowed

        settings.GATEWAY_PROVIDER_KEY_ENV_ALLOWED = ["*_API_KEY", "LLM_TOKEN_*"]
        assert key_env_allowed("LLM_TOKEN_A") and not key_env_allowed("SECRET_KEY")

    def test_a_row_naming_another_secret_sends_nothing(self, monkeypatch):
        from apps.agents.llm import LLMError, chat
        from apps.agents.models import LLMModel, ProviderKeyRefused

        monkeypatch.setenv("DATABASE_URL", "postgres://secret@db/gw")
        provider = Provider(slug="p", name="p", base_url="http://127.0.0.1:9/v1", api_key_env="DATABASE_URL")
        with pytest.raises(ProviderKeyRefused):
            provider.api_key()
        with pytest.raises(LLMError) as refused:
            chat(LLMModel(name="m", provider=provider), [{"role": "user", "content": "hi"}])
        assert refused.value.code == "provider_misconfigured" and "secret@db" not in str(refused.value)

    def test_another_providers_unset_variable_never_borrows_the_openai_key(self, settings, monkeypatch):
        settings.OPENAI_API_KEY = "sk-openai"
        monkeypatch.delenv("DASHSCOPE_API_KEY", raising=False)
        monkeypatch.delenv("OPENAI_API_KEY", raising=False)
        assert Provider(slug="q", name="q", preset="qwen", api_key_env="DASHSCOPE_API_KEY").api_key() != "sk-openai"
        assert Provider(slug="o", name="o", api_key_env="").api_key() == "sk-openai"


@pytest.mark.django_db
def test_a_model_price_is_never_negative(client, make_user, provider):
    """A negative price would make each call add credit to a cost budget."""
    from django.db import IntegrityError, transaction

    from apps.agents.models import LLMModel

    admin_client = client
    admin_client.force_login(make_user(None, is_staff=True, is_superuser=True))

    form = {"provider": provider.pk, "name": "cheap", "input_price_per_1k": "-1000", "output_price_per_1k": "0",
            "context_window": "8192"}
    page = admin_client.post("/admin/agents/llmmodel/add/", form)
    assert page.status_code == 200 and not LLMModel.objects.filter(name="cheap").exists()
    assert admin_client.post("/admin/agents/llmmodel/add/", {**form, "input_price_per_1k": "0.5"}).status_code == 302
    with pytest.raises(IntegrityError), transaction.atomic():
        LLMModel.objects.filter(name="cheap").update(output_price_per_1k=-1)


@pytest.mark.django_db
class TestKeysStayWhereTheyWereSent:
    """Staff granted the provider permissions, not superusers, may not send a key they were not
    given (stored, or in the environment) to an endpoint of their choosing."""

    @pytest.fixture
    def staff(self, client, admin_user):
        from django.contrib.auth.models import Permission

        admin_user.user_permissions.add(*Permission.objects.filter(
            codename__in=["add_provider", "change_provider", "view_provider"]))
        client.force_login(admin_user)
        return client

    @staticmethod
    def form(provider, **changes) -> dict:
        return {"slug": provider.slug, "name": provider.name, "preset": provider.preset,
                "base_url": provider.base_url, "api_key_env": provider.api_key_env, "timeout_seconds": "10",
                "enabled": "on", **changes}

    def refusals(self) -> int:
        from apps.logs.models import AuditEvent

        return AuditEvent.objects.filter(action="admin.refused").count()

    def test_moving_a_held_key_is_refused(self, staff, provider):
        provider.set_api_key(SECRET)
        provider.save()
        url = f"/admin/agents/provider/{provider.pk}/change/"
        for changes in ({"base_url": "https://attacker.example/v1"}, {"preset": "qwen", "base_url": ""},
                        {"api_key_env": "OPENAI_API_KEY"}, {"clear_api_key": "on"}):
            response = staff.post(url, self.form(provider, **changes))
            assert response.status_code == 200 and "only a superuser" in response.content.decode().lower(), changes
            row = Provider.objects.get(pk=provider.pk)
            assert (row.base_url, row.api_key_env, row.api_key()) == (provider.base_url, "", SECRET), changes
        assert self.refusals() == 4

    def test_an_environment_key_cannot_be_sent_elsewhere(self, staff, provider, monkeypatch):
        monkeypatch.setenv("OPENAI_API_KEY", "sk-from-the-environment")
        response = staff.post("/admin/agents/provider/add/", {
            **self.form(provider, slug="mine", base_url="https://attacker.example/v1", api_key_env="OPENAI_API_KEY")})
        assert response.status_code == 200 and not Provider.objects.filter(slug="mine").exists()
        assert self.refusals() == 1

    def test_their_own_key_goes_where_they_say(self, staff, provider):
        """What the permission is for: a provider with a key they type, its settings, its switch."""
        response = staff.post("/admin/agents/provider/add/", {
            **self.form(provider, slug="mine", base_url="https://mine.example/v1", new_api_key="sk-mine")})
        assert response.status_code == 302
        mine = Provider.objects.get(slug="mine")
        url = f"/admin/agents/provider/{mine.pk}/change/"
        assert staff.post(url, self.form(mine, base_url="https://other.example/v1",
                                         new_api_key="sk-mine-2")).status_code == 302
        assert staff.post(url, self.form(mine, base_url="https://other.example/v1", timeout_seconds="30",
                                         enabled="")).status_code == 302
        mine.refresh_from_db()
        assert (mine.base_url, mine.api_key(), mine.timeout_seconds, mine.enabled) == (
            "https://other.example/v1", "sk-mine-2", 30, False)
        assert self.refusals() == 0

    def test_a_superuser_may(self, staff, admin_user, provider):
        admin_user.is_superuser = True
        admin_user.save()
        url = f"/admin/agents/provider/{provider.pk}/change/"
        assert staff.post(url, self.form(provider, base_url="https://new.example/v1")).status_code == 302
