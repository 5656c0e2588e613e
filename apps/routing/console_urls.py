from django.urls import path

from . import console

urlpatterns = [
    path("", console.inbox, name="console-inbox"),
    path("list/", console.inbox_list, name="console-list"),
    path("c/<uuid:conversation_id>/", console.conversation_page, name="console-conversation"),
    path("c/<uuid:conversation_id>/transcript/", console.transcript, name="console-transcript"),
    path("c/<uuid:conversation_id>/<str:action>/", console.act, name="console-act"),
]
