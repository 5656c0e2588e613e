#!/usr/bin/env bash
# Start the gateway on the embedded default (used by `make run`).
set -euo pipefail
host="$1"; port="$2"; fake_port="$3"
bin=.venv/bin
pids=()       # the gateway's processes
model_pids=() # the model stand-in, stopped after them: their runs in flight still call it
stopping=""
# Ctrl-C asks the gateway to stop; the end of this script waits for it (its runs in flight finish,
# queued ones stay for the next start), then stops the model. A second Ctrl-C stops all at once.
# (Background jobs ignore the terminal's SIGINT; daphne and the stand-in keep it so. The waiting
# is not done in the trap: bash runs no trap while one runs, so the second Ctrl-C would wait too.)
stop() {
  if [ -n "$stopping" ]; then
    kill -KILL "${pids[@]}" "${model_pids[@]}" 2>/dev/null || true
    exit 130
  fi
  stopping=1
  for pid in "${pids[@]}"; do kill -TERM "$pid" 2>/dev/null || true; done
}
trap stop INT TERM HUP
trap 'kill -TERM "${pids[@]}" "${model_pids[@]}" 2>/dev/null || true' EXIT  # an error above

if [ -z "${OPENAI_API_KEY:-}" ]; then
  export OPENAI_BASE_URL="http://127.0.0.1:${fake_port}/v1"
  "$bin/python" manage.py fake_llm --port "$fake_port" &
  model_pids+=($!)
fi
# The demo (users, API keys, channels) unless SEED_DEMO=0; its secrets are this install's own.
staff_password="(yours)"
if [ "${SEED_DEMO:-1}" = "1" ]; then
  staff_password=$("$bin/python" manage.py seed_demo --json \
    | "$bin/python" -c 'import json, sys; print(json.load(sys.stdin)["staff"]["password"] or "(changed: yours)")')
fi
if [ -n "${REDIS_URL:-}" ]; then
  "$bin/celery" -A gateway_project worker -P threads -c "${CELERY_CONCURRENCY:-32}" -Q gateway -l WARNING &
  pids+=($!)
fi
"$bin/daphne" -b "$host" -p "$port" gateway_project.asgi:application &
pids+=($!)

for _ in $(seq 1 50); do
  [ -z "$stopping" ] || break
  curl -fs "http://$host:$port/healthz" >/dev/null 2>&1 && break
  sleep 0.2 || true  # a Ctrl-C here ends the sleep, not the script (the end stops all in order)
done
[ -n "$stopping" ] || cat <<TXT

  Agent Gateway is running (embedded default${REDIS_URL:+, with Redis and a Celery worker}).
    Web chat:   http://$host:$port/chat/web/
    Admin:      http://$host:$port/admin/   (user: staff, password: $staff_password)
    API docs:   http://$host:$port/api/v1/docs
    Demo keys:  ${OPENAI_BASE_URL:+OPENAI_BASE_URL=$OPENAI_BASE_URL }.venv/bin/python manage.py seed_demo --json
  Ctrl-C to stop.

TXT
status=0
wait -n "${pids[@]}" "${model_pids[@]}" || status=$?  # a process ended, or Ctrl-C
[ -n "$stopping" ] || stop
for pid in "${pids[@]}"; do
  while kill -0 "$pid" 2>/dev/null; do wait "$pid" 2>/dev/null || true; done
done
for pid in "${model_pids[@]}"; do kill -TERM "$pid" 2>/dev/null || true; wait "$pid" 2>/dev/null || true; done
exit "$status"
