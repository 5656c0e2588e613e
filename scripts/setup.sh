#!/bin/sh
# The services stack's one-off start-up tasks (docker-compose's "migrate" service, or by hand):
# migrate; create the first superuser from DJANGO_SUPERUSER_USERNAME / _PASSWORD / _EMAIL if they
# are set and that user does not exist yet (an existing user is never touched); seed the demo only
# when SEED_DEMO=1. Set SEED_DEMO=1 only for a trial install: it creates demo users and API keys.
set -eu
python manage.py migrate --noinput
if [ -n "${DJANGO_SUPERUSER_USERNAME:-}" ]; then
  if python manage.py shell -c 'import os, sys
from django.contrib.auth import get_user_model
sys.exit(0 if get_user_model().objects.filter(username=os.environ["DJANGO_SUPERUSER_USERNAME"]).exists() else 1)'
  then
    echo "superuser ${DJANGO_SUPERUSER_USERNAME} exists: left as it is"
  else
    DJANGO_SUPERUSER_EMAIL="${DJANGO_SUPERUSER_EMAIL:-}" python manage.py createsuperuser --noinput
  fi
fi
if [ "${SEED_DEMO:-0}" = "1" ]; then
  python manage.py seed_demo
fi
