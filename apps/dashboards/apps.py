from django.apps import AppConfig


class DashboardsConfig(AppConfig):
    """The staff dashboards and the links between the staff tools: pages that read every app, so
    they sit above the apps with the entry points, not in ``apps.logs`` (no models of their own)."""

    name = "apps.dashboards"
