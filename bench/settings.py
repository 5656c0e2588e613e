"""Settings for the benchmark's Daphne: the gateway's, plus a bare DRF endpoint (the stack's ceiling)."""
from gateway_project.settings import *  # noqa: F403

ROOT_URLCONF = "bench.urls"

# The webchat scenario holds thousands of sockets from one address.
WEBCHAT_CONNECTS_PER_IP_RATE = ""
