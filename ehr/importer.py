"""Bulk import of FHIR JSON (a resource or a Bundle) and NDJSON files into the record, under the API's rules.

Resources go through the record's bulk path (ehr/bulk.py) in batches; batch and transaction Bundles go whole
to the service, as POST /fhir would send them."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import structlog
from pymongo.errors import ConnectionFailure

from ehr.bulk import BATCH, BulkItem, BulkWriter
from ehr.models import RecordError
from ehr.service import MAX_BUNDLE_ENTRIES, RecordService

if TYPE_CHECKING:
    from qilu.settings import Settings

log = structlog.get_logger(__name__)

NDJSON_SUFFIXES = (".ndjson", ".jsonl")
JSON_SUFFIXES = (".json",)
# Batches in flight at once: one is checked while the engine stores the other.
DEFAULT_CONCURRENCY = 2
# The report keeps the first errors whole; the rest are only counted.
MAX_ERRORS_KEPT = 20

# Called as progress(file, done, total) while a file is imported (total is its resources or lines).
Progress = Callable[[str, int, int], None]


@dataclass
class ImportReport:
    """What an import did: counts over all files, and the first errors with file:line."""

    files: int = 0
    created: int = 0
    updated: int = 0
    deleted: int = 0
    unchanged: int = 0  # a conditional create (ifNoneExist) that matched an existing resource
    failed: int = 0
    errors: list[str] = field(default_factory=list)
    elapsed_s: float = 0.0

    @property
    def ok(self) -> bool:
        return self.failed == 0

    def fail(self, where: str, message: str) -> None:
        self.failed += 1
        if len(self.errors) < MAX_ERRORS_KEPT:
            self.errors.append(f"{where}: {message}")

    def describe(self) -> str:
        parts = [f"{self.created} created", f"{self.updated} updated"]
        if self.deleted:
            parts.append(f"{self.deleted} deleted")
        if self.unchanged:
            parts.append(f"{self.unchanged} already there")
        parts.append(f"{self.failed} failed")
        text = f"imported {self.files} file(s) in {self.elapsed_s:.1f} s: " + ", ".join(parts)
        if self.failed > len(self.errors):
            text += f" (the first {len(self.errors)} errors are listed)"
        return text


def describe_error(exc: RecordError) -> str:
    """One line for a refusal: status, then each issue's diagnostics and where it was found."""
    issues = []
    for issue in exc.issues:
        where = f" [{', '.join(issue.expression)}]" if issue.expression else ""
        issues.append(f"{issue.diagnostics}{where}")
    return f"{exc.status} " + "; ".join(issues)


def expand_paths(paths: Iterable[Path | str]) -> Iterator[Path]:
    """Files as given, and the .json/.ndjson files under any directory, in name order."""
    for raw in paths:
        path = Path(raw)
        if path.is_dir():
            yield from sorted(p for p in path.rglob("*") if p.is_file()
                              and p.suffix.lower() in JSON_SUFFIXES + NDJSON_SUFFIXES)
        else:
            yield path


class ResourceImporter:
    """Writes resources through the record's bulk path: an id means create or update, none means create."""

    def __init__(self, service: RecordService, *, concurrency: int = DEFAULT_CONCURRENCY,
                 progress: Progress | None = None):
        self.service = service
        self.writer = BulkWriter(service)
        self.concurrency = max(1, concurrency)
        self.progress = progress or (lambda path, done, total: None)
        self.report = ImportReport()

    async def import_paths(self, paths: Iterable[Path | str]) -> ImportReport:
        started = time.perf_counter()
        for path in expand_paths(paths):
            self.report.files += 1
            await self.import_file(path)
        self.report.elapsed_s = time.perf_counter() - started
        log.info("import finished", files=self.report.files, created=self.report.created,
                 updated=self.report.updated, failed=self.report.failed, elapsed_s=round(self.report.elapsed_s, 2))
        return self.report

    async def import_file(self, path: Path) -> None:
        if not path.is_file():
            self.report.fail(str(path), "no such file")
            return
        if path.suffix.lower() in NDJSON_SUFFIXES:
            await self._import_ndjson(path)
        else:
            await self._import_json(path)

    # --- batches of resources -------------------------------------------------------------------

    async def _write_batch(self, batch: list[tuple[str, Any]]) -> None:
        readable = [(where, resource) for where, resource in batch if not isinstance(resource, _Unreadable)]
        results = iter(await self.writer.write([BulkItem(where, resource) for where, resource in readable]))
        for where, resource in batch:  # reported in the file's order
            if isinstance(resource, _Unreadable):
                self.report.fail(where, resource.message)
                continue
            result = next(results)
            if result.error is not None:
                self.report.fail(result.where, describe_error(result.error))
            elif result.written is not None and result.written.created:
                self.report.created += 1
            else:
                self.report.updated += 1

    async def _write_all(self, path: Path, items: Iterable[tuple[str, Any]], total: int) -> None:
        """Write (where, resource-or-error) items in batches, `concurrency` of them at once, reporting progress."""
        done = 0
        in_flight = asyncio.Semaphore(self.concurrency)

        async def write(batch: list[tuple[str, Any]]) -> None:
            nonlocal done
            try:
                await self._write_batch(batch)
            except ConnectionFailure:
                raise  # the database is gone: every further batch would fail the same way
            except Exception as exc:  # noqa: BLE001 - one bad batch must not stop the import
                # The message goes to the operator's report; the log gets the type only (it may quote data).
                log.error("import: unexpected error", where=batch[0][0], error=type(exc).__name__)
                for where, _ in batch:
                    self.report.fail(where, f"internal error {type(exc).__name__}: {str(exc)[:200]}")
            finally:
                in_flight.release()
            done += len(batch)
            self.progress(str(path), done, total)

        # A TaskGroup: when a batch fails (the database went away) the others and the reading stop too.
        async with asyncio.TaskGroup() as group:
            batch: list[tuple[str, Any]] = []
            for item in items:
                batch.append(item)
                if len(batch) == BATCH:
                    await in_flight.acquire()
                    group.create_task(write(batch))
                    batch = []
            if batch:
                await in_flight.acquire()
                group.create_task(write(batch))

    # --- NDJSON ---------------------------------------------------------------------------------

    async def _import_ndjson(self, path: Path) -> None:
        try:
            with path.open("rb") as counting:
                total = sum(1 for line in counting if line.strip())
        except OSError as exc:
            self.report.fail(str(path), f"cannot read: {exc.strerror}")
            return
        self.progress(str(path), 0, total)

        def lines() -> Iterator[tuple[str, Any]]:
            # Read as bytes and decode per line, so one badly encoded line fails alone.
            with path.open("rb") as handle:
                for number, raw in enumerate(handle, start=1):
                    if not raw.strip():
                        continue
                    where = f"{path}:{number}"
                    try:
                        yield where, json.loads(raw.decode("utf-8-sig" if number == 1 else "utf-8"))
                    except UnicodeDecodeError:
                        yield where, _Unreadable("not UTF-8 text")
                    except json.JSONDecodeError as exc:
                        yield where, _Unreadable(f"not valid JSON ({exc.msg} at column {exc.colno})")

        await self._write_all(path, lines(), total)

    # --- JSON: a resource or a Bundle -----------------------------------------------------------

    async def _import_json(self, path: Path) -> None:
        try:
            body = json.loads(path.read_text(encoding="utf-8-sig"))
        except OSError as exc:
            self.report.fail(str(path), f"cannot read: {exc.strerror}")
            return
        except UnicodeDecodeError:
            self.report.fail(str(path), "not UTF-8 text")
            return
        except json.JSONDecodeError as exc:
            self.report.fail(f"{path}:{exc.lineno}", f"not valid JSON ({exc.msg} at column {exc.colno})")
            return
        if isinstance(body, dict) and body.get("resourceType") == "Bundle":
            entries = body.get("entry") or []
            if not isinstance(entries, list):
                self.report.fail(str(path), "Bundle.entry must be a list")
                return
            if body.get("type") in ("batch", "transaction"):
                await self._import_bundle(path, body, entries)
            else:
                await self._import_entries(path, entries)
            return
        self.progress(str(path), 0, 1)
        await self._write_all(path, [(str(path), body)], 1)

    async def _import_entries(self, path: Path, entries: list[Any]) -> None:
        """A collection, searchset, document or history Bundle: its resources one by one."""
        items = []
        for index, entry in enumerate(entries):
            where = f"{path}: entry[{index}]"
            if isinstance(entry, dict) and (entry.get("search") or {}).get("mode") == "outcome":
                continue  # a search's OperationOutcome is about the search, not a resource to keep
            if not isinstance(entry, dict) or not isinstance(entry.get("resource"), dict):
                items.append((where, _Unreadable("the entry has no resource")))
            else:
                items.append((where, entry["resource"]))
        self.progress(str(path), 0, len(items))
        await self._write_all(path, items, len(items))

    async def _import_bundle(self, path: Path, bundle: dict[str, Any], entries: list[Any]) -> None:
        """A batch or transaction Bundle goes to the service whole, as POST /fhir would send it."""
        total = len(entries)
        self.progress(str(path), 0, total)
        if bundle.get("type") == "batch" and total > MAX_BUNDLE_ENTRIES:
            # A batch's entries stand alone, so a big one can go in parts; a transaction cannot.
            chunks = [entries[i:i + MAX_BUNDLE_ENTRIES] for i in range(0, total, MAX_BUNDLE_ENTRIES)]
        else:
            chunks = [entries]
        offset = 0
        for chunk in chunks:
            part = {**bundle, "entry": chunk}
            try:
                response = await self.service.process_bundle(part)
            except RecordError as exc:
                # A refused transaction changed nothing: every entry counts as failed.
                kind = "transaction rolled back" if bundle.get("type") == "transaction" else "batch refused"
                self.report.fail(str(path), f"{kind}: {describe_error(exc)}")
                self.report.failed += len(chunk) - 1
            else:
                for index, (entry, outcome) in enumerate(zip(chunk, response.get("entry") or [])):
                    self._count_response(f"{path}: entry[{offset + index}]", entry, outcome)
            offset += len(chunk)
            self.progress(str(path), offset, total)

    def _count_response(self, where: str, entry: Any, outcome: dict[str, Any]) -> None:
        status = str((outcome.get("response") or {}).get("status", ""))
        method = str(((entry or {}).get("request") or {}).get("method", "")).upper()
        if status.startswith("201"):
            self.report.created += 1
        elif not status.startswith("2"):
            issues = ((outcome.get("response") or {}).get("outcome") or {}).get("issue") or []
            text = "; ".join(str(i.get("diagnostics", "")) for i in issues) or "refused"
            self.report.fail(where, f"{status.split()[0] if status else '?'} {text}")
        elif method == "PUT":
            self.report.updated += 1
        elif method == "DELETE":
            self.report.deleted += 1
        elif method == "POST":
            self.report.unchanged += 1  # 200 to a POST: its ifNoneExist matched


@dataclass(frozen=True)
class _Unreadable:
    """A line or entry that never became a resource, carried to a worker so it is counted in order."""

    message: str


async def import_files(service: RecordService, paths: Iterable[Path | str], *, progress: Progress | None = None,
                       concurrency: int = DEFAULT_CONCURRENCY) -> ImportReport:
    """Import files with an existing service (for callers that already hold a database)."""
    return await ResourceImporter(service, concurrency=concurrency, progress=progress).import_paths(paths)


async def import_paths_async(settings: Settings, paths: Iterable[Path | str], *, progress: Progress | None = None,
                             concurrency: int = DEFAULT_CONCURRENCY) -> ImportReport:
    from ehr.store import ensure_indexes
    from qilu.db import connect_mongodb, database  # the client qilu hands every domain

    client = connect_mongodb(settings)
    try:
        db = database(client, settings)
        await ensure_indexes(db)
        service = RecordService.as_system(db, settings.fhir_base_url)
        return await import_files(service, paths, progress=progress, concurrency=concurrency)
    finally:
        client.close()


def import_paths(settings: Settings, paths: Iterable[Path | str], progress: Progress | None = None, *,
                 concurrency: int = DEFAULT_CONCURRENCY) -> ImportReport:
    """Import FHIR JSON and NDJSON files into settings' database; bad resources are counted, not fatal."""
    return asyncio.run(import_paths_async(settings, list(paths), progress=progress, concurrency=concurrency))
