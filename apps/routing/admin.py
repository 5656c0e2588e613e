"""Routes in the admin, with a tester: paste a message and a sender, see which rule matches and why."""
from __future__ import annotations

import json

from django import forms
from django.contrib import admin
from django.contrib.auth import get_user_model
from django.core.exceptions import PermissionDenied
from django.db.models import Q
from django.template.response import TemplateResponse
from django.urls import path

from apps.connectors.models import Channel
from apps.conversations.models import Conversation
from apps.core.errors import GatewayError
from apps.identities.channel_scope import request_agent_ids, request_channel_ids, sees_every_channel
from apps.identities.permissions import user_can_use_agent
from apps.identities.scoped_pickers import UsablePickers

from .models import Route
from .router import decide_route


class RouteTestForm(forms.Form):
    channel = forms.ModelChoiceField(queryset=Channel.objects.all())
    sender = forms.CharField(label="Sender username", max_length=150)
    message = forms.CharField(widget=forms.Textarea(attrs={"rows": 3, "cols": 80}))
    metadata = forms.CharField(
        required=False, initial="{}", help_text="Message metadata as a JSON object.",
        widget=forms.Textarea(attrs={"rows": 2, "cols": 80}),
    )
    conversation = forms.UUIDField(required=False, help_text="Optional: an existing conversation (stickiness).")

    def __init__(self, *args, channel_ids: set[int] | None = None, **kwargs):
        super().__init__(*args, **kwargs)
        self.channel_ids = channel_ids  # channels and their conversations: these only (None: any)
        if channel_ids is not None:
            self.fields["channel"].queryset = Channel.objects.filter(pk__in=channel_ids)

    def clean_sender(self):
        user = get_user_model().objects.filter(username=self.cleaned_data["sender"]).first()
        if user is None:
            raise forms.ValidationError("No such user.")
        return user

    def clean_metadata(self):
        try:
            value = json.loads(self.cleaned_data["metadata"] or "{}")
        except ValueError as exc:
            raise forms.ValidationError(f"Not JSON: {exc}") from None
        if not isinstance(value, dict):
            raise forms.ValidationError("A JSON object, please.")
        return value

    def clean_conversation(self):
        pk = self.cleaned_data["conversation"]
        if pk is None:
            return None
        found = Conversation.objects.select_related("agent").filter(pk=pk)
        if self.channel_ids is not None:  # one the staff member may not see is one that does not exist
            found = found.filter(channel_id__in=self.channel_ids)
        conversation = found.first()
        if conversation is None:
            raise forms.ValidationError("No such conversation.")
        return conversation


@admin.register(Route)
class RouteAdmin(UsablePickers, admin.ModelAdmin):
    list_display = ("priority", "name", "agent", "enabled", "reroutes", "channel", "channel_kind", "sender_role",
                    "command", "keyword", "pattern")
    list_display_links = ("name",)
    list_editable = ("enabled",)
    list_filter = ("enabled", "agent", "channel", "channel_kind", "sender_role")
    search_fields = ("name", "keyword", "pattern", "command")
    list_select_related = ("agent", "channel")
    ordering = ("priority", "id")
    fieldsets = (
        (None, {"fields": ("name", "priority", "enabled", "agent", "reroutes")}),
        ("Conditions (all that are set must hold)", {"fields": (
            "channel", "channel_kind", "sender_role", "sender_group", "command", "keyword", "pattern", "metadata",
        )}),
    )
    change_list_template = "admin/routing/route/change_list.html"

    def get_queryset(self, request):
        # Routes to agents, and on channels, the staff member may use (as in their own admins).
        queryset = super().get_queryset(request)
        if sees_every_channel(request.user):
            return queryset
        return queryset.filter(Q(channel__isnull=True) | Q(channel_id__in=request_channel_ids(request)),
                               agent_id__in=request_agent_ids(request))

    def get_urls(self):
        tester = path("test/", self.admin_site.admin_view(self.test_view), name="routing_route_test")
        return [tester, *super().get_urls()]

    def test_view(self, request):
        """Which route would answer this message from this sender, and why (nothing is sent)."""
        if not self.has_view_permission(request):
            raise PermissionDenied
        form = RouteTestForm(request.POST or None, channel_ids=(
            None if sees_every_channel(request.user) else request_channel_ids(request)))
        decision = error = None
        if request.method == "POST" and form.is_valid():
            data = form.cleaned_data
            try:
                decision = decide_route(
                    text=data["message"], metadata=data["metadata"], channel=data["channel"],
                    user=data["sender"], conversation=data["conversation"],
                )
                shown = None if sees_every_channel(request.user) else request_agent_ids(request)
                if shown is not None:
                    # The rules checked on the way name their agent, channel and conditions: only
                    # those she finds in the routes' list (get_queryset).
                    channels = request_channel_ids(request)
                    decision.checks = [check for check in decision.checks if check.route.agent_id in shown
                                       and check.route.channel_id in (None, *channels)]
                if shown is not None and decision.agent is not None and decision.agent.pk not in shown:
                    decision, error = None, "The message would go to an agent you may not see."
                elif decision.agent is not None and not user_can_use_agent(data["sender"], decision.agent):
                    error = f"The sender may not use {decision.agent.slug}: the message would be refused."
            except GatewayError as exc:
                error = exc.message
        context = {
            **self.admin_site.each_context(request), "opts": self.model._meta, "title": "Test routes",
            "form": form, "decision": decision, "error": error,
        }
        return TemplateResponse(request, "admin/routing/route/test.html", context)
