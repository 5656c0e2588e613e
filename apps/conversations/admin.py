from django.contrib import admin, messages
from django.core.exceptions import PermissionDenied

from apps.agents.dispatch import enqueue_agent_run
from apps.core.changelist import DateHierarchyAdmin
from apps.identities.channel_scope import UsableChannelsOnly
from apps.identities.scoped_pickers import UsablePickers
from apps.routing.handoff_admin import HandoffAdminMixin

from .models import Conversation, Message


class MessageInline(admin.TabularInline):
    """The conversation's messages, in order, with what produced each reply."""

    model = Message
    fk_name = "conversation"
    extra = 0
    ordering = ("created_at",)
    fields = ("created_at", "direction", "status", "answered_by", "sender", "text", "model", "total_tokens",
              "latency_ms", "attempts", "error_code", "error_message")
    readonly_fields = fields
    can_delete = False
    show_change_link = True

    def has_add_permission(self, request, obj=None) -> bool:
        return False

    def get_queryset(self, request):
        return super().get_queryset(request).select_related("sender", "agent")

    @admin.display(description="answered by")
    def answered_by(self, obj) -> str:
        """Outbound: the human (staff) or the agent that wrote it."""
        if obj.direction != "out":
            return ""
        if not obj.by_agent:
            return f"human: {obj.sender}" if obj.sender_id else "human (deleted user)"
        return f"agent: {obj.agent.slug}" if obj.agent_id else "agent"


@admin.register(Conversation)
class ConversationAdmin(UsablePickers, UsableChannelsOnly, HandoffAdminMixin, DateHierarchyAdmin, admin.ModelAdmin):
    list_display = ("id", "channel", "user", "agent", "created_at", "last_message_at")
    list_filter = ("channel", "agent")
    search_fields = ("id", "user__username", "external_thread_id", "messages__text")
    list_select_related = ("channel", "user", "agent")
    readonly_fields = ("id", "channel", "user", "created_at", "last_message_at", "external_thread_id")
    inlines = [MessageInline]
    date_hierarchy = "last_message_at"


@admin.register(Message)
class MessageAdmin(UsablePickers, UsableChannelsOnly, DateHierarchyAdmin, admin.ModelAdmin):
    list_display = ("created_at", "direction", "status", "channel", "sender", "short_text", "model",
                    "total_tokens", "latency_ms", "error_code")
    list_filter = ("direction", "status", "channel")
    search_fields = ("id", "external_id", "text", "sender__username")
    list_select_related = ("channel", "sender")
    date_hierarchy = "created_at"
    readonly_fields = [f.name for f in Message._meta.fields]
    actions = ["requeue_unanswered"]

    @admin.action(description="Re-enqueue unanswered (accepted / processing) messages")
    def requeue_unanswered(self, request, queryset):
        """What the periodic requeue task does, on demand; answered messages are left alone."""
        ids = list(queryset.filter(direction="in", status__in=["accepted", "processing"])
                   .values_list("pk", flat=True))
        for message_id in ids:
            enqueue_agent_run(message_id)
        self.message_user(request, f"Re-enqueued {len(ids)} message(s); an answered one is never answered twice.",
                          messages.SUCCESS)

    @admin.display(description="text")
    def short_text(self, obj) -> str:
        return obj.text[:80]

    def has_add_permission(self, request) -> bool:
        return False

    # The record of what was said and answered: a message goes only with its conversation or its
    # sender (a deleted reply would leave its message answered by nothing a resend can read). The
    # delete permission stays, so that those deletes may take their messages with them.
    def delete_view(self, request, object_id, extra_context=None):
        raise PermissionDenied("A message is deleted with its conversation, not on its own.")

    def get_actions(self, request):
        actions = super().get_actions(request)
        actions.pop("delete_selected", None)
        return actions

    def change_view(self, request, object_id, form_url="", extra_context=None):
        return super().change_view(request, object_id, form_url, {**(extra_context or {}), "show_delete": False})
