"""The staff handoff inbox at ``/console/``: conversations waiting for a human, newest first,
live over a websocket (``/ws/console/``); open one to read it as it grows, take it over, reply on
the customer's channel and hand it back. Who: active staff allowed to change conversations (as in
the admin), and only conversations of channels they may use (``user_can_use_channel``)."""
from __future__ import annotations

import functools

from django.contrib import messages
from django.contrib.auth.views import redirect_to_login
from django.http import Http404, HttpResponseRedirect
from django.shortcuts import render
from django.urls import reverse
from django.views.decorators.http import require_GET, require_POST

from apps.conversations.models import Conversation, Direction
from apps.core.errors import GatewayError
from apps.identities.permissions import staff_may_act, usable_channel_ids, user_can_use_channel

from .handoff_admin import tell_delivery
from .models import Handoff
from .services import handoff_end, handoff_open, handoff_reply, handoff_start

INBOX_ROWS = 100
TRANSCRIPT_ROWS = 200


def console_allowed(user) -> bool:
    return staff_may_act(user) and user.has_perm("conversations.change_conversation")


def staff_console(view):
    @functools.wraps(view)
    def wrapper(request, *args, **kwargs):
        if not request.user.is_authenticated:
            return redirect_to_login(request.get_full_path())
        if not console_allowed(request.user):
            return render(request, "dashboard/refused.html", status=403)
        return view(request, *args, **kwargs)
    return wrapper


def waiting(user) -> list[dict]:
    """Open handoffs the user may see, newest first: waiting ones (no staff yet) and taken ones."""
    rows = (Handoff.objects.filter(ended_at__isnull=True, conversation__channel_id__in=usable_channel_ids(user))
            .select_related("conversation__channel", "conversation__user", "staff").order_by("-started_at"))
    items = []
    for handoff in rows[:INBOX_ROWS]:
        conversation = handoff.conversation
        last = conversation.messages.filter(direction=Direction.INBOUND).order_by("-created_at").first()
        items.append({"handoff": handoff, "conversation": conversation, "last": last})
    return items


def _conversation_for(request, conversation_id) -> Conversation:
    conversation = Conversation.objects.select_related("channel", "user", "agent").filter(pk=conversation_id).first()
    if conversation is None or not user_can_use_channel(request.user, conversation.channel):
        raise Http404("No such conversation.")  # the same answer for hidden and missing ones
    return conversation


@require_GET
@staff_console
def inbox(request):
    return render(request, "console/inbox.html", {"items": waiting(request.user)})


@require_GET
@staff_console
def inbox_list(request):
    return render(request, "console/_list.html", {"items": waiting(request.user)})


def _conversation_context(request, conversation) -> dict:
    transcript = list(conversation.messages.select_related("sender").order_by("-created_at")[:TRANSCRIPT_ROWS])
    transcript.reverse()
    return {"conversation": conversation, "handoff": handoff_open(conversation.pk), "transcript": transcript}


@require_GET
@staff_console
def conversation_page(request, conversation_id):
    conversation = _conversation_for(request, conversation_id)
    return render(request, "console/conversation.html", _conversation_context(request, conversation))


@require_GET
@staff_console
def transcript(request, conversation_id):
    conversation = _conversation_for(request, conversation_id)
    return render(request, "console/_transcript.html", _conversation_context(request, conversation))


@require_POST
@staff_console
def act(request, conversation_id, action):
    conversation = _conversation_for(request, conversation_id)
    try:
        if action == "take":
            handoff_start(conversation=conversation, staff=request.user)
        elif action == "reply":
            tell_delivery(request, handoff_reply(conversation=conversation, staff=request.user,
                                                 text=request.POST.get("text", "")))
        elif action == "handback":
            handoff_end(conversation=conversation, staff=request.user)
            messages.success(request, "Handed back to the agent.")
            return HttpResponseRedirect(reverse("console-inbox"))
        else:
            raise Http404("No such action.")
    except GatewayError as exc:
        messages.error(request, exc.message)
    return HttpResponseRedirect(reverse("console-conversation", args=[conversation.pk]))
