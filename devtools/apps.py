from django.apps import AppConfig


class DevtoolsConfig(AppConfig):
    """Registers the stand-ins' management commands (``fake_llm``, ``fake_platforms``)."""

    name = "devtools"
    verbose_name = "Development tools"
