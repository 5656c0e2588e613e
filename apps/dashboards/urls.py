from django.urls import path

from . import views

urlpatterns = [
    path("", views.overview, name="dashboard-overview"),
    path("cost/", views.cost, name="dashboard-cost"),
    path("conversations/", views.conversations, name="dashboard-conversations"),
    path("conversations/<uuid:conversation_id>/", views.conversation, name="dashboard-conversation"),
    path("errors/", views.errors, name="dashboard-errors"),
]
