"""The leaf every app may use and that uses none of them (an import-linter contract).

- ``errors``: ``GatewayError`` and its subclasses, the gateway's one error type, and its wire forms.
- ``client_ip``: the caller's address, behind trusted proxies only.
- ``http``: the outbound HTTP client (``request_json``), ``ConnectorError`` and the delivery retry
  policy (``send_with_retries``).
- ``field_key``: the Fernet key for secrets at rest (channel secrets, provider API keys).

Not a Django app: no models, no templates, no commands.
"""
