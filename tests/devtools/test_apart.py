"""devtools/ lives beside the gateway: a checkout has its commands, the gateway boots without it."""
import json
import os
import subprocess
import sys
from pathlib import Path

import yaml

BASE_DIR = Path(__file__).resolve().parents[2]
PROBE = """
import json, django
django.setup()
from django.conf import settings
from django.core.management import call_command, get_commands
call_command("check")
print(json.dumps({"app": "devtools" in settings.INSTALLED_APPS, "fake_llm": "fake_llm" in get_commands()}))
"""


def boot(cwd: Path) -> dict:
    """Start Django in a fresh interpreter from ``cwd``: only what is installed, plus ``cwd``."""
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env["DJANGO_SETTINGS_MODULE"] = "gateway_project.settings"
    done = subprocess.run([sys.executable, "-c", PROBE], cwd=cwd, env=env, capture_output=True, text=True,
                          timeout=120)
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout.strip().splitlines()[-1])


def test_a_checkout_has_the_stand_ins_commands():
    assert boot(BASE_DIR) == {"app": True, "fake_llm": True}


def test_the_installed_gateway_boots_without_devtools(tmp_path):
    assert boot(tmp_path) == {"app": False, "fake_llm": False}


def test_only_the_images_devtools_target_carries_it():
    """Docker cannot build here: read the Dockerfile's stages and compose's targets instead."""
    stages: dict[str, list[str]] = {}
    for line in (BASE_DIR / "Dockerfile").read_text().splitlines():
        if line.startswith("FROM "):
            stages[line.split()[-1]] = [line]
        elif stages:
            stages[list(stages)[-1]].append(line)
    assert list(stages)[-1] == "production"  # the default target
    carrying = {name for name, lines in stages.items() if any("devtools" in ln.split("#")[0] and
                                                              ln.startswith("COPY") for ln in lines)}
    assert carrying == {"devtools"}
    assert stages["production"] == ["FROM base AS production"]
    services = yaml.safe_load((BASE_DIR / "docker-compose.yml").read_text())["services"]
    assert services["fake-llm"]["build"]["target"] == "devtools"
    assert all(spec["build"] == "." for name, spec in services.items() if "build" in spec and name != "fake-llm")


def test_the_granian_command_documented_is_the_one_the_tests_run():
    from devtools.stack import GRANIAN_OPTIONS

    record = " ".join((BASE_DIR / "docs" / "decisions" / "asgi-server.md").read_text().split())
    assert f"granian {' '.join(GRANIAN_OPTIONS)} --host 0.0.0.0 --port 8000 gateway_project.asgi:application" in record


def test_the_image_serves_with_the_options_the_tests_run_uvicorn_with():
    """The e2e tests start uvicorn as the image does (tests/e2e/test_asgi_servers.py): same options."""
    from devtools.stack import UVICORN_OPTIONS

    text = (BASE_DIR / "Dockerfile").read_text().replace("\\\n", " ")
    [cmd] = [line for line in text.splitlines() if line.startswith("CMD ")]
    args = json.loads(cmd.removeprefix("CMD "))
    assert args[0] == "uvicorn" and args[-1] == "gateway_project.asgi:application"
    assert set(UVICORN_OPTIONS) <= set(args)
    worker = yaml.safe_load((BASE_DIR / "docker-compose.yml").read_text())["services"]["worker"]["command"]
    assert worker[worker.index("-P") + 1] == "gevent"
