"""The `qilu` command: serve the API, run workers, manage the embedded engines, run the demo."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import time

import typer
from rich.progress import ProgressColumn, Task
from rich.text import Text

from qilu.services import EngineError, services_down, services_status, services_up
from qilu.settings import get_settings

cli = typer.Typer(help="Qilu: telemedicine referrals and e-health records.", no_args_is_help=True,
                  add_completion=False)
services_cli = typer.Typer(help="The embedded engines: FerretDB (MongoDB wire protocol) and Redis.",
                           no_args_is_help=True)
cli.add_typer(services_cli, name="services")
user_cli = typer.Typer(help="Users: patients, practitioners and administrators.", no_args_is_help=True)
cli.add_typer(user_cli, name="user")


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


@user_cli.command("add")
def user_add(
    role: str = typer.Option(..., help="patient, practitioner or admin."),
    login: str = typer.Option(..., help="National ID number (patient), practitioner number, or an admin name."),
    name: str = typer.Option(..., help="The person's name as written on their ID."),
    organization: str = typer.Option(None, help="Organization id: a practitioner's hospital, a patient's "
                                                "managing hospital."),
    specialty: str = typer.Option(None, help="A practitioner's specialty."),
    password: str = typer.Option(..., prompt=True, hide_input=True, confirmation_prompt=True,
                                 help="At least 8 characters (asked for when not given)."),
) -> None:
    """Create a user with the FHIR resource they stand for (Patient, or Practitioner + PractitionerRole)."""
    import asyncio

    from qilu.accounts import AccountError, add_user
    from qilu.db import connect_mongodb, database
    from qilu.identity import ROLES, UserExists
    from qilu.identity import ensure_indexes as ensure_user_indexes

    if role not in ROLES:
        raise typer.BadParameter(f"role must be one of {', '.join(ROLES)}", param_hint="--role")
    settings = get_settings()

    async def create():
        client = connect_mongodb(settings)
        try:
            db = database(client, settings)
            await ensure_user_indexes(db)
            return await add_user(db, settings.fhir_base_url, role=role, login=login, password=password,
                                  name=name, organization=organization, specialty=specialty)
        finally:
            client.close()

    try:
        user = asyncio.run(create())
    except (AccountError, UserExists, ValueError) as exc:
        typer.secho(f"not created: {exc}", fg=typer.colors.RED, err=True)
        raise typer.Exit(1) from exc
    typer.echo(f"created {user.role} user {user.id}" + (f" for {user.fhir_user}" if user.fhir_user else ""))


@cli.command()
def serve(host: str = typer.Option(None, help="Listen address (default QILU_HOST)."),
          port: int = typer.Option(None, help="Port (default QILU_PORT)."),
          workers: int = typer.Option(1, help="Uvicorn worker processes.")) -> None:
    """Serve the API and portals with uvicorn."""
    import uvicorn

    settings = get_settings()
    uvicorn.run("qilu.app:create_app", factory=True, host=host or settings.host, port=port or settings.port,
                workers=workers, log_config=None, proxy_headers=False,
                timeout_graceful_shutdown=settings.shutdown_grace_s)


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

    def stop_on_term(_signum, _frame):
        raise KeyboardInterrupt  # a `kill` stops the API and the worker too, as Ctrl-C does

    signal.signal(signal.SIGTERM, stop_on_term)
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


class RateColumn(ProgressColumn):
    """Resources per second of a task, as rich measures it from the task's recent progress."""

    def render(self, task: Task) -> Text:
        return Text(f"{task.speed or 0:,.0f} resources/s")


@cli.command("import")
def import_command(
    paths: list[str] = typer.Argument(..., help="FHIR JSON files (a resource or a Bundle), .ndjson files, or "
                                                "directories of them."),
    concurrency: int = typer.Option(2, min=1, max=8, help="Batches of resources written at once."),
) -> None:
    """Load FHIR resources into the record through the same rules as the API; exits 1 when any failed."""
    from pymongo.errors import ConnectionFailure
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    from ehr.importer import import_paths
    from qilu.logs import configure_logging

    settings = get_settings()
    configure_logging(settings.log_format, settings.log_level)  # counts only; masked like every log
    with Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), RateColumn(),
                  TimeElapsedColumn()) as bar:
        tasks: dict[str, int] = {}

        def progress(path: str, done: int, total: int) -> None:
            if path not in tasks:
                tasks[path] = bar.add_task(os.path.basename(path), total=total)
            bar.update(tasks[path], completed=done, total=total)

        try:
            report = import_paths(settings, paths, progress, concurrency=concurrency)
        except ConnectionFailure as exc:
            typer.secho(f"cannot reach MongoDB at {settings.effective_mongodb_url} ({type(exc).__name__}); "
                        "is it running? (`qilu services up` starts the embedded one)", fg=typer.colors.RED, err=True)
            raise typer.Exit(2) from exc
    typer.echo(report.describe())
    for line in report.errors:
        typer.secho("  " + line, fg=typer.colors.RED, err=True)
    if not report.ok:
        raise typer.Exit(1)


@cli.command("reindex")
def reindex_command(
    resource_types: list[str] = typer.Argument(None, help="Resource types (all when none is named)."),
) -> None:
    """Derive again the search fields, compartments and reach of stored resources, in batches; an interrupted
    run goes on from where it stopped when started again."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    from ehr.models import RESOURCE_TYPES
    from ehr.reindex import Reindex
    from ehr.store import RecordStore
    from qilu.db import connect_mongodb, database

    unknown = sorted(set(resource_types or []) - set(RESOURCE_TYPES))
    if unknown:
        typer.secho(f"not a resource type the record keeps: {', '.join(unknown)}", fg=typer.colors.RED, err=True)
        raise typer.Exit(2)
    settings = get_settings()

    async def run(progress) -> dict[str, int]:
        client = connect_mongodb(settings)
        try:
            return await Reindex(RecordStore(database(client, settings))).run(resource_types or None, progress)
        finally:
            client.close()

    with Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn()) as bar:
        tasks: dict[str, int] = {}

        def progress(what: str, done: int, total: int) -> None:
            if what not in tasks:
                tasks[what] = bar.add_task(what, total=total, completed=done)
            bar.update(tasks[what], completed=done, total=total)

        changed = asyncio.run(run(progress))
    typer.echo(f"reindexed: {sum(changed.values())} documents changed")


def main() -> None:
    cli()


if __name__ == "__main__":
    main()
