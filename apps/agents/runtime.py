"""Running an agent on one inbound message: claim → prompt → model → reply → deliver.

``agent_run`` is what the Celery task calls; it composes the steps, each in its own module:

    claims.claim()          take the message, in the conversation's order (WaitingForEarlier)
    prompt.build_prompt()   system prompt + the history the speaker may see + the message
    orchestrator.generate() tool loop and fallback chain, each call through model_call.call_model()
    delivery.save_reply()   store the reply and mark the message answered, atomically
    delivery.deliver()      send it, then queue the conversation's next waiting message

It is idempotent under redelivery: the claim is one conditional UPDATE, and a database constraint
allows one agent reply per inbound message.
"""
from __future__ import annotations

import logging

from django.db.models import Q

from apps.conversations.models import Direction, Message, Status
from apps.core.errors import Forbidden
from apps.identities.models import api_key_by_id
from apps.identities.permissions import user_may_act
from apps.logs.structured import message_id_var, request_id_var
from gateway_project.db import is_database_outage, through_outage

from . import hooks, leases, llm, orchestrator
from .claims import claim, release_claim
from .delivery import deliver, fail_message, save_reply, start_next_in_conversation
from .dispatch import process_stopping
from .prompt import build_prompt

logger = logging.getLogger(__name__)


class DatabaseUnavailable(Exception):
    """The database went away during the run and the message is not answered: try again shortly.

    ``claimed_attempt`` is the message's ``attempts`` as this run claimed it (None if the claim
    was not made or already given back); the retry passes it as ``release_attempt``.
    """

    def __init__(self, claimed_attempt: int | None):
        super().__init__("database unavailable during the agent run")
        self.claimed_attempt = claimed_attempt


def agent_run(message_id, *, ignore_order: bool = False, release_attempt: int | None = None,
              wait_for_budget: bool = False) -> Message | None:
    """Answer one inbound message. Returns the reply, or None if there was nothing to do.

    Raises WaitingForEarlier (nothing changed) while an earlier message of its conversation is
    in flight; the caller retries later, and finally passes ``ignore_order=True``.

    Raises DatabaseUnavailable when the database fails mid-run; the caller retries later with
    ``release_attempt=exc.claimed_attempt``, which first gives back the claim the failed run left.

    ``wait_for_budget``: raises BudgetHeld (the claim given back, nothing spent) when other calls
    in flight hold what is left of a budget; the caller tries again later, and finally passes False
    (the message then fails, its sender told to retry shortly).
    """
    token = message_id_var.set(str(message_id))
    request_token = None
    message = None
    try:
        if release_attempt is not None:
            release_claim(message_id, release_attempt)
            release_attempt = None
        message = claim(message_id, ignore_order=ignore_order)
        if message is None:
            return None
        # The id of the request that brought the message in, so its logs join up with the reply's.
        request_token = request_id_var.set(message.request_id or None)
        with leases.kept(message.pk):  # however long the run takes, nobody else claims it meanwhile
            try:
                # A delivered reply's run starts the next when it records the delivery.
                reply = _answer(message, wait_for_budget=wait_for_budget)
            except orchestrator.BudgetHeld:
                release_claim(message.pk, message.attempts, waiting=True)  # tried again shortly, holding no worker
                raise
            except Exception as exc:
                if is_database_outage(exc):
                    raise
                if process_stopping():
                    # Not the message's fault: the process is exiting (under `make run` its model
                    # stand-in too). Give the claim back; the next start answers it.
                    logger.warning("agent run interrupted by the process stopping; left for the next start",
                                   extra={"error": f"{type(exc).__name__}: {exc}"[:500]})
                    release_claim(message.pk, message.attempts)
                    return None
                # A bug or an outage must not leave the sender waiting in silence.
                logger.exception("agent run crashed")
                fail_message(message, llm.LLMError("internal_error", "The agent run crashed."))
                reply = None
            if reply is None and message.status != Status.ACCEPTED:  # not put back for a human (handoff)
                start_next_in_conversation(message)
        return reply
    except Exception as exc:
        # The database went away (PostgreSQL restarting, a pool timeout, a cancelled statement): the
        # run is retried rather than the message failed, since nothing about the message is wrong.
        if not is_database_outage(exc):
            raise
        logger.warning("database unavailable during the agent run; it will be retried",
                       extra={"error": str(exc)[:500]})
        if message is not None:
            _take_back_streamed_text(message)
        claimed = message.attempts if message is not None else release_attempt
        raise DatabaseUnavailable(claimed) from exc
    finally:
        if request_token is not None:
            request_id_var.reset(request_token)
        message_id_var.reset(token)


def _answer(message: Message, *, wait_for_budget: bool = False) -> Message | None:
    if hooks.handoff().hold(message):
        return None  # a human has the conversation
    if message.agent is None:  # deleted since the message was routed to it (a retry or recovery)
        fail_message(message, llm.LLMError("agent_unavailable", "The agent this message went to was deleted."))
        return None
    if (refused := sender_refused(message)) is not None:
        fail_message(message, refused)
        return None
    connector = message.channel.connector
    prompt = build_prompt(message)
    on_delta = on_reset = None
    streamed = False
    if connector.wants_stream(message):
        def on_delta(piece: str) -> None:
            nonlocal streamed
            streamed = True
            _unless_stopping(connector.send_delta, message, piece)

        def on_reset() -> None:
            _unless_stopping(connector.send_reset, message)
    try:
        # Tool loop, retries and the fallback chain; every model call goes through call_model.
        result = orchestrator.generate(message, prompt, on_delta=on_delta, on_reset=on_reset,
                                       wait_for_budget=wait_for_budget)
    except llm.LLMError as exc:
        if process_stopping():
            raise  # agent_run gives the claim back
        fail_message(message, exc)
        return None
    reply = through_outage(lambda: save_reply(message, result))  # the answer is paid for: keep it
    if reply is None:
        if streamed:  # the client was shown this run's answer, and the message has another
            _take_back_streamed_text(message, replaced=True)
        return None
    deliver(reply, inbound=message, then_start_next=True)
    return reply


def sender_refused(message: Message) -> llm.LLMError | None:
    """Why a message accepted earlier may no longer be answered: its sender was blocked or disabled,
    or the API key it came with revoked or expired, meanwhile. Its queue then spends nothing more."""
    if message.sender is not None and not user_may_act(message.sender):
        error = Forbidden("This account may no longer be answered.")
    elif message.api_key_id is not None and not getattr(api_key_by_id(message.api_key_id), "is_usable", False):
        error = Forbidden("The API key this message came with is revoked or expired.")
    else:
        return None
    refused = llm.LLMError("sender_refused", error.message)
    refused.gateway_error = error  # what the sender is told (delivery.fail_message)
    return refused


def _unless_stopping(send, *args) -> None:
    """Stream a piece to the client, unless the process is exiting: its listeners are gone with
    the server, and the channel layer may refuse (asgiref takes no new futures then). The run
    goes on; its reply is stored and delivered (or left for the next start's recovery)."""
    try:
        send(*args)
    except Exception:
        if not process_stopping():
            raise


def _take_back_streamed_text(message: Message, *, replaced: bool = False) -> None:
    """A client shown part of this run's answer drops it: a retry answers from the start, or,
    ``replaced``, the message was answered otherwise (a person who took the conversation over)."""
    try:
        connector = message.channel.connector
        if connector.wants_stream(message):
            connector.send_reset(message, replaced=replaced)
    except Exception:  # the channel layer may be down too; the retry's reply still replaces it
        logger.warning("could not tell the client to drop a partial answer", exc_info=True)


def give_up_after_outage(message_id, claimed_attempt: int | None) -> None:
    """The database stayed out through every retry: fail the message (if it is still this run's,
    or waiting) and tell the sender, rather than leave it silent. Raises if the database is out."""
    claimable = Q(status=Status.ACCEPTED)
    if claimed_attempt is not None:
        claimable |= Q(status=Status.PROCESSING, attempts=claimed_attempt)
    message = Message.objects.filter(claimable, pk=message_id, direction=Direction.INBOUND).first()
    if message is not None:
        fail_message(message, llm.LLMError("database_unavailable", "The database stayed unavailable."))
