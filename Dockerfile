# The gateway image: uvicorn (HTTP + websockets; Daphne, or granian for HTTP alone, serve the same app),
# Celery workers and beat all run from it.
# Targets: `production` (the default, last below) carries the gateway only; `devtools` adds the
# local stand-ins (devtools/) for compose's fake-llm service. `base` is what both share.
FROM python:3.11-slim-bookworm AS base

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

WORKDIR /app

# curl for the container health checks.
RUN apt-get update \
    && apt-get install -y --no-install-recommends curl \
    && rm -rf /var/lib/apt/lists/*

COPY pyproject.toml README.md ./
COPY gateway_project ./gateway_project
COPY apps ./apps
RUN pip install .

COPY manage.py ./
COPY templates ./templates
COPY scripts ./scripts
# A throwaway key for collectstatic alone: no key is baked into the image (set SECRET_KEY at run time).
RUN SECRET_KEY="$(python -c 'import secrets; print(secrets.token_urlsafe(64))')" \
    python manage.py collectstatic --noinput

RUN useradd --system --uid 10001 --home-dir /app gateway && chown -R gateway /app
USER gateway

EXPOSE 8000
HEALTHCHECK --interval=15s --timeout=3s --retries=3 CMD curl -fs http://127.0.0.1:8000/healthz || exit 1
# uvicorn (docs/decisions/asgi-server.md; Daphne serves the same app too): no access log, the gateway
# writes its own request log; no lifespan, Django has none; X-Forwarded-For is for the gateway's own
# GATEWAY_TRUSTED_PROXIES rule, so uvicorn must not rewrite the client address from it; h11 (its
# 16 KiB bound on a request's head) and 1 MiB websocket messages, as Daphne bounds them.
CMD ["uvicorn", "--host", "0.0.0.0", "--port", "8000", "--no-access-log", "--lifespan", "off", \
     "--no-proxy-headers", "--http", "h11", \
     "--ws-max-size", "1048576", "gateway_project.asgi:application"]


# The stand-ins (`manage.py fake_llm`, `manage.py fake_platforms`) for a trial or a test stack.
# Settings add the devtools app when /app/devtools is present (manage.py runs from /app).
FROM base AS devtools
USER root
# The `devtools` extra's libraries only (aiohttp); the gateway package itself is installed already.
RUN python -c 'import tomllib; print("\n".join(tomllib.load(open("pyproject.toml", "rb"))["project"]["optional-dependencies"]["devtools"]))' \
        > /tmp/devtools-requirements.txt \
    && pip install -r /tmp/devtools-requirements.txt \
    && rm /tmp/devtools-requirements.txt
COPY --chown=gateway devtools ./devtools
USER gateway


# The default target: the gateway without the workbench (no devtools/, no aiohttp).
FROM base AS production
