"""apps.agents.llm.ClientPools: a provider's calls share one client until GATEWAY_MODEL_CALLS_PER_POOL
are in flight on it, then spill into another client (its own connection pool); through the real
``openai`` client against the local stand-in."""
import threading

import pytest

from apps.agents import llm
from apps.agents.models import Provider


@pytest.fixture
def fresh_pools(monkeypatch):
    monkeypatch.setattr(llm, "_pools", {})


def ask_at_once(model, count: int, text: str) -> list[str]:
    """``count`` calls started together; their answers."""
    answers, start = [None] * count, threading.Barrier(count)

    def ask(i):
        start.wait()
        answers[i] = llm.chat(model, [{"role": "user", "content": f"{text} {i}"}]).text

    threads = [threading.Thread(target=ask, args=(i,)) for i in range(count)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    return answers


@pytest.mark.django_db
def test_calls_one_after_another_stay_on_one_client(llm_model, fresh_pools, settings):
    settings.GATEWAY_MODEL_CALLS_PER_POOL = 2
    for i in range(4):
        assert "hello" in llm.chat(llm_model, [{"role": "user", "content": f"hello {i}"}]).text
    assert len(llm.pools_for(llm_model.provider).clients()) == 1


@pytest.mark.django_db
def test_calls_in_flight_spill_into_more_clients_which_are_kept(llm_model, fresh_pools, settings):
    settings.GATEWAY_MODEL_CALLS_PER_POOL = 2
    answers = ask_at_once(llm_model, 5, "[[delay:1]] at once")
    assert all(answer and "at once" in answer for answer in answers), answers
    pools = llm.pools_for(llm_model.provider)
    assert len(pools.clients()) == 3  # 2 + 2 + 1
    first = pools.clients()

    answers = ask_at_once(llm_model, 4, "[[delay:1]] again")
    assert all(answer and "again" in answer for answer in answers), answers
    assert pools.clients() == first  # the leases were given back: no new client


@pytest.mark.django_db
@pytest.mark.parametrize("share", [0, -1])
def test_zero_keeps_every_call_on_one_client(llm_model, fresh_pools, settings, share):
    settings.GATEWAY_MODEL_CALLS_PER_POOL = share
    answers = ask_at_once(llm_model, 5, "[[delay:1]] one pool")
    assert all(answer and "one pool" in answer for answer in answers), answers
    assert len(llm.pools_for(llm_model.provider).clients()) == 1


@pytest.mark.django_db
def test_a_failed_call_gives_its_lease_back(llm_model, fresh_pools, settings):
    settings.GATEWAY_MODEL_CALLS_PER_POOL = 1
    with pytest.raises(llm.LLMError):
        llm.chat(llm_model, [{"role": "user", "content": "[[fail:500]]"}])
    assert "fine" in llm.chat(llm_model, [{"role": "user", "content": "fine"}]).text
    assert len(llm.pools_for(llm_model.provider).clients()) == 1


@pytest.mark.django_db
def test_clients_past_the_first_are_closed_once_idle(llm_model, fresh_pools, settings, monkeypatch):
    settings.GATEWAY_MODEL_CALLS_PER_POOL = 2
    monkeypatch.setattr(llm.ClientPools, "SPILL_IDLE_SECONDS", 0.5)
    ask_at_once(llm_model, 5, "[[delay:1]] burst")
    pools = llm.pools_for(llm_model.provider)
    first, *spilled = pools.clients()
    assert len(spilled) == 2 and not any(client.is_closed() for client in spilled)

    threading.Event().wait(0.8)  # the burst's clients idle past SPILL_IDLE_SECONDS
    assert "after" in llm.chat(llm_model, [{"role": "user", "content": "after"}]).text
    assert pools.clients() == [first] and not first.is_closed()
    assert all(client.is_closed() for client in spilled)


@pytest.mark.django_db
def test_a_client_that_fails_to_close_fails_no_call_and_keeps_no_lease(llm_model, fresh_pools, settings,
                                                                       monkeypatch):
    settings.GATEWAY_MODEL_CALLS_PER_POOL = 1
    monkeypatch.setattr(llm.ClientPools, "SPILL_IDLE_SECONDS", 0.2)
    ask_at_once(llm_model, 2, "[[delay:0.5]] two")
    pools = llm.pools_for(llm_model.provider)
    first, spilled = pools.clients()

    def refuse():
        raise OSError("socket refused to close")

    monkeypatch.setattr(spilled, "close", refuse)
    threading.Event().wait(0.4)
    assert "still" in llm.chat(llm_model, [{"role": "user", "content": "still answered"}]).text
    assert pools.clients() == [first]
    assert "again" in llm.chat(llm_model, [{"role": "user", "content": "again"}]).text
    assert pools.clients() == [first]  # the first call gave its lease back: no spill


@pytest.mark.django_db
def test_a_rotated_key_closes_the_old_clients_once_their_calls_are_done(llm_model, fresh_pools, settings):
    """The old key's clients would otherwise keep their connections, and the key, for good."""
    settings.GATEWAY_MODEL_CALLS_PER_POOL = 1
    provider = llm_model.provider
    provider.set_api_key("sk-old")
    provider.save()
    old = llm.pools_for(provider)
    in_flight = old.lease()
    busy = in_flight.__enter__()  # a call still at the model when the key is rotated
    with old.lease() as idle:  # a second client, its call done
        assert idle is not busy
    stale = Provider.objects.get(pk=provider.pk)  # a run that loaded it before the rotation
    provider.set_api_key("sk-new")
    provider.save()
    new = llm.pools_for(provider)
    assert new is not old and llm.pools_for(provider) is new
    with llm.pools_for(stale).lease() as client:  # its next call: the old key, on a client of its own
        assert client.api_key == "sk-old" and client is not busy
    assert client.is_closed() and llm.pools_for(provider) is new  # the new clients stay
    assert idle.is_closed() and not busy.is_closed()  # the call in flight goes on
    assert "hello" in llm.chat(llm_model, [{"role": "user", "content": "hello"}]).text
    assert [client.api_key for client in new.clients()] == ["sk-new"]
    in_flight.__exit__(None, None, None)
    assert busy.is_closed() and old.clients() == []


@pytest.mark.django_db
def test_a_key_set_back_becomes_current_again(llm_model, fresh_pools):
    """A, B, then A again: the copy read last is the provider's configuration; one read before
    that is a stale run's, whichever key it holds."""
    copies = {}
    for step, key in enumerate(("sk-a", "sk-b", "sk-a")):
        llm_model.provider.set_api_key(key)
        llm_model.provider.save()
        copies[step] = Provider.objects.get(pk=llm_model.provider.pk)  # what a run reads now
        current = llm.pools_for(copies[step])
    assert llm.pools_for(copies[2]) is current and llm.pools_for(copies[0]) is current  # both "sk-a"
    stale = llm.pools_for(copies[1])  # a run that read "sk-b" before it was set back
    assert stale is not current and llm.pools_for(copies[2]) is current
    with current.lease() as client:
        assert client.api_key == "sk-a"
