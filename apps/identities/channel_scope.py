"""The admin's pages of what was said on a channel (conversations, messages, model and tool
calls) show a staff member only the channels they may use, as the staff console does; a hidden
row is "not found". Superusers see everything."""
from __future__ import annotations

from django.contrib import admin

from .permissions import usable_channel_ids


def request_channel_ids(request) -> set[int]:
    """``usable_channel_ids`` of the request's user, worked out once per request."""
    ids = getattr(request, "_usable_channel_ids", None)
    if ids is None:
        ids = request._usable_channel_ids = usable_channel_ids(request.user)
    return ids


class UsableChannelsOnly:
    """A ModelAdmin mixin; ``channel_path`` is the lookup from the model to its channel's id."""

    channel_path = "channel_id"

    def get_queryset(self, request):
        queryset = super().get_queryset(request)
        if request.user.is_superuser:
            return queryset
        return queryset.filter(**{f"{self.channel_path}__in": request_channel_ids(request)})


class UsableChannelFilter(admin.RelatedFieldListFilter):
    """The channel filter, offering only the channels the staff member may use (read from the
    channels table, not from the rows)."""

    def field_choices(self, field, request, model_admin):
        if request.user.is_superuser:
            return super().field_choices(field, request, model_admin)
        return field.get_choices(include_blank=False, ordering=self.field_admin_ordering(field, request, model_admin),
                                 limit_choices_to={"pk__in": request_channel_ids(request)})
