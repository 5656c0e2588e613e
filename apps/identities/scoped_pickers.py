"""What the admin offers to pick, filter by or delete along names only the channels, agents and
tools the staff member may use (``channel_scope``'s rule; superusers who may act see everything).

``UsablePickers``, a ModelAdmin mixin on every admin of the gateway:

- list filters on a relation to a channel, agent or tool list only those she may use;
- form choices (selects, multiple selects, autocompletes) offer only those; a row's current
  hidden value stays selected, labelled without its name, so that a save keeps it; a POST naming
  any other hidden id is a form error ("Select a valid choice"), audited (``admin.refused``);
- a deletion that would take along, or is held back by, a row she may not see (one pointing to a
  channel, agent or tool she may not use: a route, an agent's fallback; or naming one by content
  type and id: a guardian object permission, an admin log entry) is refused, and the page names
  only the types of the rows it would take, never a row.

Raw-id widgets print the name of whatever id is typed into them: a field pointing to a channel,
agent or tool is never one (``raw_id_fields``).
"""
from __future__ import annotations

from django.contrib import admin
from django.contrib.admin.models import LogEntry
from django.contrib.admin.utils import NestedObjects, get_fields_from_path
from django.contrib.contenttypes.fields import GenericForeignKey
from django.contrib.contenttypes.models import ContentType
from django.core.exceptions import FieldDoesNotExist, ValidationError
from django.db import router
from django.forms import ModelChoiceField
from django.utils.text import capfirst

from .channel_scope import (
    UsableChannelsOnly,
    request_agent_ids,
    request_channel_ids,
    request_tool_ids,
    sees_every_channel,
)
from .privileges import refused

SCOPED = {"connectors.Channel": request_channel_ids, "agents.Agent": request_agent_ids,
          "agents.Tool": request_tool_ids}
HIDDEN_LABEL = "(one you may not use)"


def usable_ids(request, model) -> set[int] | None:
    """The ids of ``model``'s rows the staff member may use; None when she may use them all (not a
    channel, agent or tool, or she sees everything)."""
    request_ids = SCOPED.get(model._meta.label)
    if request_ids is None or sees_every_channel(request.user):
        return None
    return request_ids(request)


class UsableRelatedFilter(admin.RelatedFieldListFilter):
    """A relation's filter, offering only the rows the staff member may use (read from their table,
    not from the listed rows)."""

    def field_choices(self, field, request, model_admin):
        ids = usable_ids(request, field.related_model)
        if ids is None:
            return super().field_choices(field, request, model_admin)
        return field.get_choices(include_blank=False, ordering=self.field_admin_ordering(field, request, model_admin),
                                 limit_choices_to={"pk__in": ids})


def narrow_choices(form, request) -> list[str]:
    """Offer in ``form``'s relation fields only what the staff member may use, and the row's current
    values (a hidden one unnamed). Returns the names of the fields narrowed."""
    narrowed = []
    for name, field in form.fields.items():
        if not isinstance(field, ModelChoiceField):
            continue
        ids = usable_ids(request, field.queryset.model)
        if ids is None:
            continue
        field.queryset = field.queryset.filter(pk__in=ids | _current_ids(form.instance, name))
        field.label_from_instance = _masked(field.label_from_instance, ids)
        narrowed.append(name)
    return narrowed


def audit_hidden_picks(form, request, narrowed: list[str]) -> None:
    """Audit a POST naming what a narrowed field does not offer: crafted, the form never shows one."""
    for name in narrowed:
        if form.has_error(name, "invalid_choice"):
            model = form.fields[name].queryset.model
            refused(request, what=f"pick a {model._meta.verbose_name} she may not use", field=name)


def _current_ids(instance, name: str) -> set:
    """The ids the saved row holds in its field ``name`` (none for a new row, or a form-only field)."""
    if instance._state.adding:
        return set()
    try:
        field = instance._meta.get_field(name)
    except FieldDoesNotExist:
        return set()
    if field.many_to_many:
        return set(getattr(instance, name).values_list("pk", flat=True))
    value = getattr(instance, field.attname, None) if field.many_to_one else None
    return set() if value is None else {value}


def _masked(label_from_instance, ids: set[int]):
    return lambda obj: label_from_instance(obj) if obj.pk in ids else HIDDEN_LABEL


def names_hidden(obj, request) -> bool:
    """``obj`` is a channel, agent or tool the staff member may not use, or points to one."""
    ids = usable_ids(request, type(obj))
    if ids is not None and obj.pk not in ids:
        return True
    for field in obj._meta.concrete_fields:
        if field.many_to_one and (ids := usable_ids(request, field.related_model)) is not None:
            value = getattr(obj, field.attname)
            if value is not None and value not in ids:
                return True
    return False


def hidden_types(objs, request, site) -> set[str]:
    """The types of the rows deleting ``objs`` would take along, or is protected by, that point to
    something the staff member may not use. Left to Django's own check: rows whose admin scopes
    them (``UsableChannelsOnly``: its ``has_delete_permission``); left out: links between rows
    (many-to-many tables), which name nothing and whose deletion deletes nothing hidden."""
    if not objs or sees_every_channel(request.user):
        return set()
    collector = NestedObjects(using=router.db_for_write(objs[0]._meta.model), origin=objs)
    collector.collect(objs)
    rows = [*collector.protected, *(obj for found in collector.model_objs.values() for obj in found)]
    return {obj._meta.verbose_name for obj in rows
            if not obj._meta.auto_created and not _scoped_rows(site, type(obj))
            and (names_hidden(obj, request) or _names_hidden_by_id(obj, request, site))}


def _scoped_rows(site, model) -> bool:
    return site.is_registered(model) and isinstance(site.get_model_admin(model), UsableChannelsOnly)


def _names_hidden_by_id(obj, request, site) -> bool:
    """``obj`` names, by content type and id rather than a foreign key, a row the staff member may
    not see: a guardian object permission (its name is its object's), an admin log entry (its
    object's name when it was written)."""
    pairs = [(field.ct_field, field.fk_field) for field in obj._meta.private_fields
             if isinstance(field, GenericForeignKey)]
    if isinstance(obj, LogEntry):
        pairs.append(("content_type", "object_id"))
    for ct_field, fk_field in pairs:
        type_id = getattr(obj, obj._meta.get_field(ct_field).attname, None)
        model = ContentType.objects.get_for_id(type_id).model_class() if type_id else None
        if model is not None and _hidden_row(model, getattr(obj, fk_field), request, site):
            return True
    return False


def _hidden_row(model, pk, request, site) -> bool:
    """The row of ``model`` with this ``pk`` is, or points to, one the staff member may not see (as
    its admin judges it); a row gone since is not."""
    ids = usable_ids(request, model)
    if ids is not None:
        return str(pk) not in {str(pk_) for pk_ in ids}
    try:
        row = model._default_manager.filter(pk=pk).first()
    except (ValueError, TypeError, ValidationError):
        return False
    if row is None:
        return False
    if _scoped_rows(site, model):
        model_admin = site.get_model_admin(model)
        return not model_admin.usable_row(row, model_admin.request_ids(request))
    return names_hidden(row, request)


class UsablePickers:
    """A ModelAdmin mixin: filters, form choices and deletion pages as the module says."""

    def get_list_filter(self, request):
        return [_scoped_filter(self.model, entry) for entry in super().get_list_filter(request)]

    def get_list_display(self, request):
        editable = set(self.list_editable)
        return [entry if entry in editable else _masked_column(self.model, entry, request)
                for entry in super().get_list_display(request)]

    def get_form(self, request, obj=None, **kwargs):
        form_class = super().get_form(request, obj, **kwargs)

        class Narrowed(form_class):
            def __init__(self, *args, **kwargs):
                super().__init__(*args, **kwargs)
                self.narrowed = narrow_choices(self, request)

            def clean(self):
                audit_hidden_picks(self, request, self.narrowed)
                return super().clean()

        Narrowed.__name__ = form_class.__name__
        return Narrowed

    def get_deleted_objects(self, objs, request):
        to_delete, model_count, perms_needed, protected = super().get_deleted_objects(objs, request)
        return to_delete, model_count, perms_needed | hidden_types(objs, request, self.admin_site), protected


def _masked_column(model, entry, request):
    """A list column of a relation to a channel, agent or tool: a row on a channel she may use can
    point to an agent she may not (a route to it); that one is shown as HIDDEN_LABEL."""
    if not isinstance(entry, str):
        return entry
    try:
        field = model._meta.get_field(entry)
    except FieldDoesNotExist:
        return entry
    if not (field.many_to_one and field.related_model._meta.label in SCOPED):
        return entry
    ids = usable_ids(request, field.related_model)
    if ids is None:
        return entry

    # Not sortable: the order of the rows would place the hidden name among the others.
    @admin.display(description=capfirst(field.verbose_name))
    def column(obj):
        value = getattr(obj, field.attname)
        if value is None:
            return None
        return str(getattr(obj, field.name)) if value in ids else HIDDEN_LABEL

    column.__name__ = entry
    return column


def _scoped_filter(model, entry):
    """A filter named by a field path, on a relation to a channel, agent or tool: the scoped one."""
    if not isinstance(entry, str):
        return entry
    field = get_fields_from_path(model, entry)[-1]
    if field.is_relation and field.related_model._meta.label in SCOPED:
        return (entry, UsableRelatedFilter)
    return entry
