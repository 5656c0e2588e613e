"""Human handoff in the conversation admin: take over, reply as yourself, hand back."""
from __future__ import annotations

from django.contrib import messages
from django.core.exceptions import PermissionDenied, ValidationError
from django.http import HttpResponseNotAllowed, HttpResponseRedirect
from django.shortcuts import get_object_or_404
from django.urls import path, reverse

from apps.conversations.models import Status
from apps.core.errors import GatewayError
from apps.identities.scoped_pickers import HIDDEN_LABEL, names_hidden

from .services import handoff_end, handoff_open, handoff_reply, handoff_start


class HandoffAdminMixin:
    """For the Conversation admin: POST endpoints for the handoff and its panel's context."""

    def get_urls(self):
        view = self.admin_site.admin_view
        return [
            path("<uuid:pk>/handoff/<str:action>/", view(self.handoff_view), name="conversations_conversation_handoff"),
            *super().get_urls(),
        ]

    def handoff_view(self, request, pk, action):
        if request.method != "POST":
            return HttpResponseNotAllowed(["POST"])
        conversation = get_object_or_404(self.get_queryset(request), pk=pk)
        if not self.has_change_permission(request, conversation):
            raise PermissionDenied
        try:
            if action == "start":
                handoff_start(conversation=conversation, staff=request.user)
                messages.success(request, "You have the conversation; the agent is paused.")
            elif action == "reply":
                reply = handoff_reply(conversation=conversation, staff=request.user, text=request.POST.get("text", ""))
                tell_delivery(request, reply)
            elif action == "end":
                handoff_end(conversation=conversation, staff=request.user)
                messages.success(request, "Handed back to the agent.")
            else:
                raise PermissionDenied
        except GatewayError as exc:
            messages.error(request, exc.message)
        return HttpResponseRedirect(reverse("admin:conversations_conversation_change", args=[pk]))

    def change_view(self, request, object_id, form_url="", extra_context=None):
        try:
            handoff = handoff_open(self.model._meta.pk.to_python(object_id)) if object_id else None
        except ValidationError:  # not a conversation's id: the admin says there is no such one
            handoff = None
        conversation = self.get_object(request, object_id) if object_id else None
        agent = conversation.agent if conversation is not None else None
        # Its agent by slug, unless she may not use it (a route to it on a channel she may use).
        agent_label = None if agent is None else HIDDEN_LABEL if names_hidden(agent, request) else agent.slug
        extra_context = {**(extra_context or {}), "handoff": handoff, "agent_label": agent_label}
        return super().change_view(request, object_id, form_url, extra_context)


def tell_delivery(request, reply) -> None:
    """What became of a person's reply on the customer's channel, as the one who wrote it sees it."""
    if reply.status == Status.FAILED:
        messages.error(request, f"The reply is stored, but the channel did not take it: {reply.error_message}")
    elif reply.status == Status.PENDING:
        messages.warning(request, "The reply is stored; the channel cannot be reached now, and it is sent "
                                  "once it can.")
    else:
        messages.success(request, "Reply sent.")
