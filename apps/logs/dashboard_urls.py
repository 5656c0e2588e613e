from django.urls import path

from . import dashboard

urlpatterns = [
    path("", dashboard.overview, name="dashboard-overview"),
    path("cost/", dashboard.cost, name="dashboard-cost"),
    path("conversations/", dashboard.conversations, name="dashboard-conversations"),
    path("conversations/<uuid:conversation_id>/", dashboard.conversation, name="dashboard-conversation"),
    path("errors/", dashboard.errors, name="dashboard-errors"),
]
