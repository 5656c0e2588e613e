"""Settings for the floor bench's bare server: Django's own ASGI handler, no middleware, one async
view (bench/floor_urls.py). What a request costs the stack before the gateway does anything."""
from gateway_project.settings import *  # noqa: F403

ROOT_URLCONF = "bench.floor_urls"
MIDDLEWARE: list[str] = []
