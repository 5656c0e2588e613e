#!/usr/bin/env bash
# Start the gateway on the embedded default (used by `make run`).
set -euo pipefail
host="$1"; port="$2"; fake_port="$3"
bin=.venv/bin
pids=()      # the gateway's processes: stopped first
model_pid=  # the stand-in model: stopped once they have exited
# The server finishes the agent runs it has queued before it exits. The stand-in model used to be
# stopped with it, and each of those runs then failed and its sender got an error.
stop() {
  for pid in "${pids[@]}"; do kill "$1" "$pid" 2>/dev/null || true; done
  for pid in "${pids[@]}"; do wait "$pid" 2>/dev/null || true; done
  if [ -n "$model_pid" ]; then kill "$model_pid" 2>/dev/null || true; fi
}
cleanup() {
  trap 'trap - EXIT INT TERM; stop -KILL; exit 130' INT TERM
  trap - EXIT
  echo "Stopping: finishing the agent runs already queued (Ctrl-C again to stop now; the next start answers the rest)."
  stop -TERM
}
trap cleanup EXIT INT TERM

if [ -z "${OPENAI_API_KEY:-}" ]; then
  export OPENAI_BASE_URL="http://127.0.0.1:${fake_port}/v1"
  # Its own session: the terminal's Ctrl-C reaches the whole process group, and the stand-in
  # (aiohttp) stops on it; stop() stops it after the server.
  setsid "$bin/python" manage.py fake_llm --port "$fake_port" &
  model_pid=$!
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
  curl -fs "http://$host:$port/healthz" >/dev/null 2>&1 && break
  sleep 0.2
done
cat <<TXT

  Agent Gateway is running (embedded default${REDIS_URL:+, with Redis and a Celery worker}).
    Web chat:   http://$host:$port/chat/web/
    Admin:      http://$host:$port/admin/   (user: staff, password: $staff_password)
    API docs:   http://$host:$port/api/v1/docs
    Demo keys:  ${OPENAI_BASE_URL:+OPENAI_BASE_URL=$OPENAI_BASE_URL }.venv/bin/python manage.py seed_demo --json
  Ctrl-C to stop.

TXT
wait -n "${pids[@]}" ${model_pid:+"$model_pid"}
