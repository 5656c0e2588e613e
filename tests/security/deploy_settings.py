"""The gateway's settings as Django's ``check --deploy`` must see them.

The gateway's middleware are subclasses of Django's (gateway_project/middleware.py), and Django's
security checks find SecurityMiddleware, XFrameOptionsMiddleware and CsrfViewMiddleware by dotted
name: with ours they skip every check that depends on them (HSTS, SSL redirect, nosniff, ...). Here
each entry is replaced by the Django class it extends (``DJANGO_PARENTS``; the test checks the
subclassing) and the W001-W003 silences are lifted, so ``check --deploy`` judges the HTTPS settings.
"""
from gateway_project.settings import *  # noqa: F403
from gateway_project.settings import MIDDLEWARE as GATEWAY_MIDDLEWARE
from gateway_project.settings import SILENCED_SYSTEM_CHECKS as GATEWAY_SILENCED

DJANGO_PARENTS = {
    "gateway_project.middleware.SecurityMiddleware": "django.middleware.security.SecurityMiddleware",
    "gateway_project.middleware.CommonMiddleware": "django.middleware.common.CommonMiddleware",
    "gateway_project.middleware.XFrameOptionsMiddleware": "django.middleware.clickjacking.XFrameOptionsMiddleware",
    "gateway_project.middleware.SessionMiddleware": "django.contrib.sessions.middleware.SessionMiddleware",
    "gateway_project.middleware.CsrfViewMiddleware": "django.middleware.csrf.CsrfViewMiddleware",
    "gateway_project.middleware.AuthenticationMiddleware": "django.contrib.auth.middleware.AuthenticationMiddleware",
    "gateway_project.middleware.MessageMiddleware": "django.contrib.messages.middleware.MessageMiddleware",
}

MIDDLEWARE = [DJANGO_PARENTS.get(path, path) for path in GATEWAY_MIDDLEWARE]
SILENCED_SYSTEM_CHECKS = [name for name in GATEWAY_SILENCED if not name.startswith("security.")]
