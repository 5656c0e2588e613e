"""The admin's change lists with a ``date_hierarchy``: its bounds always fit a datetime."""
from __future__ import annotations

from datetime import MAXYEAR

from django.contrib.admin.options import IncorrectLookupParameters
from django.contrib.admin.views.main import ChangeList


class DateHierarchyChangeList(ChangeList):
    """Django's, refusing a year whose end no datetime holds (``?created_at__year=9999``, with or
    without ``__month=12`` / ``__day=31``) as a bad lookup: the admin redirects with ``?e=1``, as
    for an unknown field. Django works out the next year, month or day after it, which raises
    ValueError or OverflowError there: a 500."""

    def get_filters(self, request):
        if self.date_hierarchy:
            years = self.get_filters_params().get(f"{self.date_hierarchy}__year")
            try:
                year = int(years[-1]) if years else None  # read as Django reads it
            except ValueError:
                year = None  # not a number: Django refuses it itself
            if year is not None and year >= MAXYEAR:
                raise IncorrectLookupParameters(f"{self.date_hierarchy}__year: at most {MAXYEAR - 1}")
        return super().get_filters(request)


class DateHierarchyAdmin:
    """A ModelAdmin mixin for every admin with a ``date_hierarchy``."""

    def get_changelist(self, request, **kwargs):
        return DateHierarchyChangeList
