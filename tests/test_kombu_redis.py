"""Celery's broker connection uses the Redis transport that keeps one client per channel
(gateway_project/kombu_redis.py): publishing, receiving and acknowledging still work, on one client."""
import uuid

import pytest
from kombu import Exchange, Queue

from gateway_project.celery import app
from gateway_project.kombu_redis import Transport

pytestmark = pytest.mark.services


def test_publish_receive_and_ack_share_one_client_per_channel():
    queue = Queue(f"test-kombu-{uuid.uuid4().hex}", Exchange("", type="direct"), routing_key=None)
    queue.routing_key = queue.name
    with app.connection_for_write() as conn:
        assert isinstance(conn.transport, Transport)
        channel = conn.channel()
        bound = queue(channel)
        bound.declare()
        try:
            producer = conn.Producer(channel)
            for i in range(3):
                producer.publish({"n": i}, exchange="", routing_key=queue.name, serializer="json")
            first = channel._create_client()
            received = []
            for _ in range(3):
                message = bound.get(no_ack=False)
                assert message is not None
                received.append(message.payload["n"])
                assert first.hexists(channel.unacked_key, message.delivery_tag)  # held until acknowledged
                message.ack()
                assert not first.hexists(channel.unacked_key, message.delivery_tag)
            assert received == [0, 1, 2]
            assert bound.get() is None
            assert channel._create_client() is first
        finally:
            bound.delete()
            channel.close()
