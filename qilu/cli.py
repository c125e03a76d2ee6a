"""The `qilu` command: serve the API, run workers, manage the embedded engines, run the demo."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import typer

from qilu.services import EngineError, services_down, services_status, services_up
from qilu.settings import get_settings

cli = typer.Typer(help="Qilu: telemedicine referrals and e-health records.", no_args_is_help=True,
                  add_completion=False)
services_cli = typer.Typer(help="The embedded engines: FerretDB (MongoDB wire protocol) and Redis.",
                           no_args_is_help=True)
cli.add_typer(services_cli, name="services")


def _bring_services_up() -> None:
    try:
        for engine, what in services_up(get_settings()).items():
            typer.echo(f"{engine}: {what}")
    except EngineError as exc:
        typer.secho(f"services up failed: {exc}", fg=typer.colors.RED, err=True)
        raise typer.Exit(1) from exc


@services_cli.command("up")
def services_up_command() -> None:
    """Install (when missing) and start FerretDB and Redis; a no-op for what already answers."""
    _bring_services_up()


@services_cli.command("down")
def services_down_command() -> None:
    """Stop the engines that qilu started (never one it did not start)."""
    for engine, what in services_down(get_settings()).items():
        typer.echo(f"{engine}: {what}")


@services_cli.command("status")
def services_status_command(as_json: bool = typer.Option(False, "--json", help="Print JSON.")) -> None:
    """Whether each engine answers, and whether qilu manages it."""
    statuses = services_status(get_settings())
    if as_json:
        typer.echo(json.dumps([s.__dict__ for s in statuses]))
        return
    for s in statuses:
        state = "up" if s.answers else "down"
        managed = f"managed by qilu (pid {s.pid})" if s.managed_by_qilu else "not managed by qilu"
        typer.echo(f"{s.name}: {state} at {s.url}; {managed}; {s.detail}")
    if not all(s.answers for s in statuses):
        raise typer.Exit(3)


@cli.command()
def serve(host: str = typer.Option(None, help="Listen address (default QILU_HOST)."),
          port: int = typer.Option(None, help="Port (default QILU_PORT)."),
          workers: int = typer.Option(1, help="Uvicorn worker processes.")) -> None:
    """Serve the API and portals with uvicorn."""
    import uvicorn

    settings = get_settings()
    uvicorn.run("qilu.app:create_app", factory=True, host=host or settings.host, port=port or settings.port,
                workers=workers, log_config=None, proxy_headers=False)


@cli.command()
def worker(beat: bool = typer.Option(True, help="Run the beat scheduler inside this worker."),
           concurrency: int = typer.Option(2, help="Worker processes."),
           loglevel: str = typer.Option("INFO")) -> None:
    """Start a Celery worker (with beat by default) on the configured Redis."""
    from qilu.logs import configure_logging
    from workers.celery_app import app

    settings = get_settings()
    configure_logging(settings.log_format, settings.log_level)
    argv = ["worker", f"--loglevel={loglevel}", f"--concurrency={concurrency}", "--pool=prefork"]
    if beat:
        argv.append("--beat")
    app.worker_main(argv)


@cli.command()
def demo() -> None:
    """Bring the engines up, seed the demo data, then serve the API and a worker until Ctrl-C."""
    settings = get_settings()
    _bring_services_up()
    from qilu.demo import seed_demo

    typer.echo("seeding demo data (idempotent) ...")
    summary = seed_demo(settings)
    typer.echo(summary.describe())
    env = {**os.environ, "QILU_LOG_FORMAT": os.environ.get("QILU_LOG_FORMAT", "console")}
    children = [
        subprocess.Popen([sys.executable, "-m", "qilu", "worker"], env=env),
        subprocess.Popen([sys.executable, "-m", "qilu", "serve"], env=env),
    ]
    typer.secho(f"\nQilu is running at {settings.base_url}  (FHIR API at {settings.base_url}/fhir)",
                fg=typer.colors.GREEN)
    for line in summary.logins():
        typer.echo("  " + line)
    typer.echo("Press Ctrl-C to stop.")
    try:
        while all(child.poll() is None for child in children):
            time.sleep(0.5)
    except KeyboardInterrupt:
        pass
    finally:
        for child in children:
            if child.poll() is None:
                child.send_signal(signal.SIGINT)
        for child in children:
            try:
                child.wait(timeout=15)
            except subprocess.TimeoutExpired:
                child.kill()
    typer.echo("stopped API and worker (the engines keep running: `qilu services down` stops them)")


def main() -> None:
    cli()


if __name__ == "__main__":
    main()
