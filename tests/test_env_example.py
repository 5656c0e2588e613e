""".env.example is the operator's list of knobs with their defaults: each GATEWAY_ value it gives
is what the settings use when the variable is unset. (An empty value there means "unset".)

Read in a child process with no GATEWAY_ variable set, so neither the test run's own environment
nor CI's changes what the settings default to.
"""
import json
import re
import subprocess
import sys

from devtools.stack import BASE_DIR, base_env

READ_DEFAULTS = r"""
import json, sys
import django
django.setup()
from django.conf import settings
names = json.loads(sys.stdin.read())
print(json.dumps({name: getattr(settings, name) for name in names if hasattr(settings, name)}, default=sorted))
"""


def as_setting(raw: str, default):
    """``raw`` read the way django-environ reads it into a value of ``default``'s type."""
    if isinstance(default, bool):
        return raw.lower() in ("1", "true", "yes", "on")
    if isinstance(default, list):  # of the default's items' type (GATEWAY_BUDGET_ALERT_PERCENTS: ints)
        cast = type(default[0]) if default else str
        return [cast(item.strip()) for item in raw.split(",") if item.strip()]
    return type(default)(raw) if isinstance(default, (int, float)) else raw


def test_every_value_in_env_example_is_the_settings_default():
    stated = {}
    for line in (BASE_DIR / ".env.example").read_text().splitlines():
        found = re.match(r"^(GATEWAY_[A-Z0-9_]+)=(.+)$", line.strip())
        if found:
            stated[found[1]] = found[2]
    env = {k: v for k, v in base_env().items() if not k.startswith("GATEWAY_")}
    done = subprocess.run([sys.executable, "-c", READ_DEFAULTS], cwd=BASE_DIR, env=env, input=json.dumps(list(stated)),
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-3000:]
    defaults = json.loads(done.stdout.strip().splitlines()[-1])
    assert len(defaults) >= 40, defaults  # the file's knobs are read, not skipped
    wrong = {name: (raw, defaults[name]) for name, raw in stated.items()
             if name in defaults and as_setting(raw, defaults[name]) != defaults[name]}
    assert not wrong, f".env.example states (value, settings default): {wrong}"
