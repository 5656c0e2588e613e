"""The admin's pages of what was said on a channel (conversations, messages, model and tool
calls, request logs) show a staff member only the channels they may use, as the staff console
does; a hidden row is "not found", and cannot be deleted (nor can what its deletion would take
along). The channels, agents and tools themselves likewise: a channel opened in its admin page
(its visibility) would open its transcripts, a tool made public would be every customer's.
Superusers who may act see everything. What the admin offers to pick or filter by, and its
deletion pages: ``scoped_pickers``."""
from __future__ import annotations

from django.db.models import Q

from .permissions import usable_agent_ids, usable_channel_ids, usable_tool_ids, user_may_act


def sees_every_channel(user) -> bool:
    return bool(user.is_superuser) and user_may_act(user)


def request_channel_ids(request) -> set[int]:
    """``usable_channel_ids`` of the request's user, worked out once per request."""
    return _once_per_request(request, usable_channel_ids)


def request_agent_ids(request) -> set[int]:
    """``usable_agent_ids`` of the request's user, worked out once per request."""
    return _once_per_request(request, usable_agent_ids)


def request_tool_ids(request) -> set[int]:
    """``usable_tool_ids`` of the request's user, worked out once per request."""
    return _once_per_request(request, usable_tool_ids)


def _once_per_request(request, usable_ids) -> set[int]:
    kept = request.__dict__.setdefault("_usable_ids", {})
    if usable_ids not in kept:
        kept[usable_ids] = usable_ids(request.user)
    return kept[usable_ids]


class UsableChannelsOnly:
    """A ModelAdmin mixin; ``channel_path`` is the lookup from the model to its channel's id."""

    channel_path = "channel_id"
    request_ids = staticmethod(request_channel_ids)

    def usable_rows(self, ids: set[int]) -> Q:
        return Q(**{f"{self.channel_path}__in": ids})

    def usable_row(self, obj, ids: set[int]) -> bool:
        """``usable_rows`` for one row in hand (read from its fields: a deletion asks it per row)."""
        value = obj
        for part in self.channel_path.split("__"):
            value = getattr(value, part, None)
        return value in ids

    def get_queryset(self, request):
        queryset = super().get_queryset(request)
        if sees_every_channel(request.user):
            return queryset
        return queryset.filter(self.usable_rows(self.request_ids(request)))

    def has_delete_permission(self, request, obj=None) -> bool:
        # Also asked for each row another deletion would take along (a user's, a conversation's):
        # a hidden one refuses that deletion, and its confirmation page lists no row.
        if not super().has_delete_permission(request, obj):
            return False
        if obj is None or sees_every_channel(request.user):
            return True
        return self.usable_row(obj, self.request_ids(request))


class UsableChannelsOrNone(UsableChannelsOnly):
    """``UsableChannelsOnly`` for rows whose channel may be blank (a rule or a policy for no one
    channel, usage on a channel deleted since): those stay listed."""

    def usable_rows(self, ids: set[int]) -> Q:
        return super().usable_rows(ids) | Q(**{f"{self.channel_path}__isnull": True})

    def usable_row(self, obj, ids: set[int]) -> bool:
        return getattr(obj, self.channel_path) is None or super().usable_row(obj, ids)


class UsableAgentsOnly(UsableChannelsOnly):
    """The agents' admin: only the agents the staff member may use (``usable_agent_ids``)."""

    channel_path = "pk"  # the row is the agent
    request_ids = staticmethod(request_agent_ids)


class UsableToolsOnly(UsableChannelsOnly):
    """The tools' admin: only the tools the staff member may use (a tool made public in its page
    would be handed to every customer)."""

    channel_path = "pk"  # the row is the tool
    request_ids = staticmethod(request_tool_ids)

