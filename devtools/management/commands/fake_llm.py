"""``manage.py fake_llm``: run the OpenAI-compatible stand-in until killed.

Prints ``fake_llm listening on http://HOST:PORT/v1`` (flushed) once the socket is
bound, so a parent process can wait for that line; SIGTERM/SIGINT stop it cleanly.
"""

from django.core.management.base import BaseCommand, CommandError

from devtools import fake_llm


class Command(BaseCommand):
    help = "Run the local OpenAI-compatible fake LLM server (tests, demo, benchmarks)."
    # It needs neither the database nor the app registry checks; skip them so the
    # server is listening as fast as possible.
    requires_system_checks: list[str] = []
    requires_migrations_checks = False

    def add_arguments(self, parser):
        parser.add_argument("--host", default="127.0.0.1")
        parser.add_argument("--port", type=int, default=8001, help="0 picks a free port")
        parser.add_argument("--delay-ms", type=float, default=0.0, help="fixed latency added before every answer")
        parser.add_argument("--token-delay-ms", type=float, default=0.0, help="delay between streamed chunks")
        parser.add_argument(
            "--error-rate",
            type=float,
            default=0.0,
            help="probability (0..1) of an injected HTTP 500",
        )
        parser.add_argument("--seed", type=int, default=None, help="seed for the error-rate RNG")

    def handle(self, *args, **options):
        def ready(base_url: str) -> None:
            self.stdout.write(f"fake_llm listening on {base_url}")
            self.stdout.flush()

        try:
            fake_llm.run_server(
                options["host"],
                options["port"],
                on_ready=ready,
                delay_ms=options["delay_ms"],
                token_delay_ms=options["token_delay_ms"],
                error_rate=options["error_rate"],
                seed=options["seed"],
            )
        except (ValueError, OSError) as exc:  # bad option values, port in use
            raise CommandError(str(exc)) from exc
