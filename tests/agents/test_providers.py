"""Provider presets and the write-only, encrypted API key."""
import pytest

from apps.agents.llm import client_for
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
        assert client_for(row).api_key == SECRET

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
