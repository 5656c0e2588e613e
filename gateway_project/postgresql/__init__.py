"""The gateway's database engine: Django's PostgreSQL backend with a cheaper pool check (base.py)."""
