"""The embedded engines (FerretDB as the MongoDB wire server, and Redis): install, start, stop, report."""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from urllib.parse import urlparse

import pymongo
import redis

from qilu.settings import Settings

FERRETDB_MODULE = "github.com/FerretDB/FerretDB"
# Bumped whenever install_ferretdb changes what it builds.
FERRETDB_BUILD = "qilu6"
LOOPBACK_HOSTS = {"127.0.0.1", "localhost", "::1"}


class EngineError(RuntimeError):
    """An engine could not be installed or started; the message says what to install or set."""


@dataclass
class EngineStatus:
    name: str
    url: str
    answers: bool
    managed_by_qilu: bool
    pid: int | None
    detail: str


# --- probes -------------------------------------------------------------------------------------


def mongodb_answers(url: str, timeout_ms: int = 800) -> bool:
    client = pymongo.MongoClient(url, serverSelectionTimeoutMS=timeout_ms, connectTimeoutMS=timeout_ms)
    try:
        client.admin.command("ping")
        return True
    except pymongo.errors.PyMongoError:
        return False
    finally:
        client.close()


def redis_answers(url: str, timeout_s: float = 0.8) -> bool:
    client = redis.Redis.from_url(url, socket_timeout=timeout_s, socket_connect_timeout=timeout_s)
    try:
        return bool(client.ping())
    except redis.RedisError:
        return False
    finally:
        client.close()


def _port_in_use(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        return sock.connect_ex(("127.0.0.1", port)) == 0


def _wait_until(check, timeout_s: float, what: str, log_file: Path) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if check():
            return
        time.sleep(0.2)
    tail = log_file.read_text(errors="replace")[-2000:] if log_file.exists() else ""
    raise EngineError(f"{what} did not answer within {timeout_s:.0f}s; its log ({log_file}) ends with:\n{tail}")


# --- managed processes (pid files under DATA_DIR/run) -----------------------------------------


def _pid_file(settings: Settings, name: str) -> Path:
    return settings.path("run", f"{name}.pid")


def _managed_pid(settings: Settings, name: str) -> int | None:
    pid_file = _pid_file(settings, name)
    try:
        pid = int(pid_file.read_text().strip())
        os.kill(pid, 0)
        return pid
    except (FileNotFoundError, ValueError, ProcessLookupError, PermissionError):
        return None


def _spawn(settings: Settings, name: str, argv: list[str]) -> Path:
    settings.path("run").mkdir(parents=True, exist_ok=True)
    settings.path("log").mkdir(parents=True, exist_ok=True)
    log_file = settings.path("log", f"{name}.log")
    with open(log_file, "ab") as log:
        # A session of its own so Ctrl-C on the CLI, or a test run ending, does not take it down.
        proc = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                start_new_session=True)
    _pid_file(settings, name).write_text(str(proc.pid))
    return log_file


def _stop(settings: Settings, name: str, timeout_s: float = 10.0) -> bool:
    pid = _managed_pid(settings, name)
    _pid_file(settings, name).unlink(missing_ok=True)
    if pid is None:
        return False
    os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return True
        try:
            os.waitpid(pid, os.WNOHANG)  # reap it when it is our own child (tests start engines too)
        except ChildProcessError:
            pass
        time.sleep(0.1)
    os.kill(pid, signal.SIGKILL)
    return True


# --- FerretDB -----------------------------------------------------------------------------------


def _go_bin_dir() -> Path | None:
    go = shutil.which("go")
    if go is None:
        return None
    out = subprocess.run([go, "env", "GOBIN", "GOPATH"], capture_output=True, text=True, check=True).stdout
    gobin, gopath = (out.splitlines() + ["", ""])[:2]
    if gobin.strip():
        return Path(gobin.strip())
    return Path(gopath.strip().split(os.pathsep)[0]) / "bin"


def _runs(binary: Path) -> bool:
    # A plain `go install` of FerretDB leaves a binary that panics at start (see install_ferretdb).
    try:
        return subprocess.run([str(binary), "--version"], capture_output=True, timeout=20).returncode == 0
    except (OSError, subprocess.TimeoutExpired):
        return False


def _built_binary_name(settings: Settings) -> str:
    # Named after the version and the build's own change, so a plain or older build is never taken for it.
    return f"ferretdb-{settings.ferretdb_version}-{FERRETDB_BUILD}"


def ferretdb_binary(settings: Settings) -> Path | None:
    """Our own build when there is a Go toolchain (None until it is built: its `_id` lookups use the index);
    without Go, a `ferretdb` on PATH."""
    bin_dir = _go_bin_dir()
    if bin_dir is not None:
        built = bin_dir / _built_binary_name(settings)
        return built if built.exists() and _runs(built) else None
    on_path = shutil.which("ferretdb")
    return Path(on_path) if on_path and _runs(Path(on_path)) else None


def install_ferretdb(settings: Settings) -> Path:
    """Build FerretDB from its Go module with the machine's Go toolchain.

    `go install .../cmd/ferretdb@v1.24.2` builds, but the binary panics at start: the module as
    published lacks the generated build/version/version.txt that a build of FerretDB's own main
    module requires. So we fetch the same module from the Go module proxy, add that one file with
    the version we asked for, and `go build` its cmd/ferretdb.

    Its SQLite backend is changed (`change_the_sqlite_backend`) in three ways:
    - it builds the `_id` index on `_ferretdb_sjson->"_id"` but looks documents up by `_ferretdb_sjson->'$._id'`,
      and SQLite uses an expression index only for the very same expression, so every read, replace and delete
      by `_id` scanned the whole table (measured: 15 ms per read at 3,000 documents, growing with the collection);
    - it narrowed by `_id` only when `_id` was the filter's one key, so a version-conditioned replace
      `{_id, vid}` read every document of the collection (20-65 ms at 3,000);
    - it narrows by nothing else, and an SQLite index holds one value per row, so no search of a list field (each
      of a FHIR resource's search fields is one) could use an index. Indexes named `mk_*` are kept in side tables
      maintained by triggers, one row per value, and a filter they cover is narrowed through them (the Go
      sources are in qilu/ferretdb/, and say what they assume).
    Built with these, lookups by `_id`, by a list of ids and by the fields of an `mk_` index are B-tree searches.
    """
    go = shutil.which("go")
    bin_dir = _go_bin_dir()
    if go is None or bin_dir is None:
        raise EngineError(
            "FerretDB is not installed and there is no Go toolchain to build it. Install Go (>= 1.22) "
            "and run `qilu services up` again, or set QILU_MONGODB_URL to a running MongoDB."
        )
    version = settings.ferretdb_version
    env = {**os.environ, "GOFLAGS": "-mod=mod", "GOTOOLCHAIN": "local"}
    try:
        info = subprocess.run([go, "mod", "download", "-json", f"{FERRETDB_MODULE}@{version}"],
                              capture_output=True, text=True, check=True, env=env)
        module_dir = Path(json.loads(info.stdout)["Dir"])
        with tempfile.TemporaryDirectory(prefix="ferretdb-build-") as tmp:
            src = Path(tmp) / "src"
            shutil.copytree(module_dir, src)
            for path in src.rglob("*"):
                path.chmod(path.stat().st_mode | 0o200)
            (src / "build" / "version" / "version.txt").write_text(version + "\n")
            change_the_sqlite_backend(src)
            bin_dir.mkdir(parents=True, exist_ok=True)
            binary = bin_dir / _built_binary_name(settings)
            subprocess.run([go, "build", "-trimpath", "-o", str(binary), "./cmd/ferretdb"],
                           cwd=src, capture_output=True, text=True, check=True, env=env)
    except subprocess.CalledProcessError as exc:
        raise EngineError(
            f"Building FerretDB {version} with Go failed:\n{exc.stderr[-3000:]}\n"
            "Install FerretDB yourself (a `ferretdb` binary on PATH) or set QILU_MONGODB_URL."
        ) from exc
    return binary


# The build's changes to FerretDB's SQLite backend: (file, line as published, line as built, times found).
SQLITE_EDITS = [
    # The `_id` index gets metadata.IDColumn, the expression every `_id` lookup of the backend uses.
    ("internal/backends/sqlite/metadata/registry.go",
     '\t\t\tcolumns[i] = fmt.Sprintf("%s->%s", DefaultColumn, strings.Join(fields, "->"))\n',
     '\t\t\tcolumns[i] = fmt.Sprintf("%s->%s", DefaultColumn, strings.Join(fields, "->"))\n'
     '\t\t\tif key.Field == "_id" {\n\t\t\t\tcolumns[i] = IDColumn\n\t\t\t}\n', 1),
    # Narrow by `_id` whenever the filter names one, not only when `_id` is the filter's only key: every
    # caller of Query (find, count, update, delete, findAndModify, aggregate) applies the whole filter to
    # what comes back, so the WHERE clause only spares reading the rest of the table.
    ("internal/backends/sqlite/collection.go", "\tif params.Filter.Len() == 1 {\n",
     "\tif params.Filter.Len() >= 1 {\n", 2),
    # Otherwise narrow through a list of ids or an `mk_` index (qilu_pushdown.go), in find and in explain alike.
    ("internal/backends/sqlite/collection.go", "\tq += whereClause\n\tq += prepareOrderByClause(params.Sort)\n",
     "\tif whereClause == \"\" {\n\t\tq, args, _ = qiluQuery(ctx, db, meta, params.Filter, params.Sort, q)\n"
     "\t} else {\n\t\tq += whereClause\n\t\tq += prepareOrderByClause(params.Sort)\n\t}\n", 1),
    ("internal/backends/sqlite/collection.go",
     "\tq := `EXPLAIN QUERY PLAN ` + selectClause + whereClause + orderByClause\n",
     "\tq := `EXPLAIN QUERY PLAN ` + selectClause + whereClause + orderByClause\n\n"
     "\tif whereClause == \"\" {\n\t\tvar narrowed string\n"
     "\t\tnarrowed, args, filterPushdown = qiluQuery(ctx, db, meta, params.Filter, params.Sort, selectClause)\n"
     "\t\tq = `EXPLAIN QUERY PLAN ` + narrowed\n\t}\n", 1),
    # An `mk_` index is made, and dropped, with its side table (qilu_multikey.go).
    ("internal/backends/sqlite/metadata/registry.go", "\t\tcreated = append(created, index.Name)\n",
     "\t\tif IsMultikey(index) {\n"
     "\t\t\tif err := multikeyCreate(ctx, db, c.TableName, index, c.Settings.Indexes); err != nil {\n"
     "\t\t\t\t_, _ = db.ExecContext(ctx, fmt.Sprintf(\"DROP INDEX %q\", c.TableName+\"_\"+index.Name))\n"
     "\t\t\t\t_ = r.indexesDrop(ctx, dbName, collectionName, created)\n"
     "\t\t\t\treturn lazyerrors.Error(err)\n\t\t\t}\n\t\t}\n\n"
     "\t\tcreated = append(created, index.Name)\n", 1),
    ("internal/backends/sqlite/metadata/registry.go",
     '\t\tq := fmt.Sprintf("DROP INDEX %q", c.TableName+"_"+name)\n',
     "\t\tif IsMultikey(c.Settings.Indexes[i]) {\n"
     "\t\t\tif err := multikeyDrop(ctx, db, c.TableName, c.Settings.Indexes[i], c.Settings.Indexes); err != nil {\n"
     "\t\t\t\treturn lazyerrors.Error(err)\n\t\t\t}\n\t\t}\n\n"
     '\t\tq := fmt.Sprintf("DROP INDEX %q", c.TableName+"_"+name)\n', 1),
    # A find (and its explain) sorted by `_id` alone gets its order from SQLite, through the `_id` index, so
    # nothing is sorted in Go and a limit stops the reading once it has its documents (qilu_pushdown.go).
    *((handler, "\tcase params.Sort.Len() == 1:\n\t\tif params.Sort.Keys()[0] != \"$natural\" {\n",
       "\tcase params.Sort.Len() == 1 && params.Sort.Keys()[0] == \"_id\":\n"
       "\t\tqp.Sort = params.Sort\n\t\tparams.Sort = must.NotFail(types.NewDocument())\n"
       "\tcase params.Sort.Len() == 1:\n\t\tif params.Sort.Keys()[0] != \"$natural\" {\n", 1)
      for handler in ("internal/handler/msg_find.go", "internal/handler/msg_explain.go")),
    ("internal/backends/collection.go", '\t\tsortValue := params.Sort.Map()["$natural"].(int64)\n',
     '\t\tsortValue := params.Sort.Map()[params.Sort.Keys()[0]].(int64) // $natural, or Qilu\'s _id\n', 2),
    ("internal/backends/sqlite/query.go", "\tif sort.Len() != 1 {\n\t\treturn \"\"\n\t}\n\n",
     "\tif sort.Len() != 1 {\n\t\treturn \"\"\n\t}\n\n"
     "\tif direction, err := sort.Get(\"_id\"); err == nil {\n\t\treturn qiluOrderByID(direction)\n\t}\n\n", 1),
    ("internal/backends/sqlite/metadata/registry.go", '\tq = fmt.Sprintf("DROP TABLE %q", c.TableName)\n',
     "\tfor _, index := range c.Settings.Indexes {\n\t\tif IsMultikey(index) {\n"
     "\t\t\tif err := multikeyDrop(ctx, db, c.TableName, index, nil); err != nil {\n"
     "\t\t\t\treturn false, lazyerrors.Error(err)\n\t\t\t}\n\t\t}\n\t}\n\n"
     '\tq = fmt.Sprintf("DROP TABLE %q", c.TableName)\n', 1),
]

# Go sources the build adds: (file in qilu/ferretdb, where it goes in FerretDB's tree).
SQLITE_SOURCES = [
    ("qilu_multikey.go", "internal/backends/sqlite/metadata/qilu_multikey.go"),
    ("qilu_pushdown.go", "internal/backends/sqlite/qilu_pushdown.go"),
]


def change_the_sqlite_backend(src: Path) -> None:
    for relative, published, built, times in SQLITE_EDITS:
        path = src / relative
        text = path.read_text()
        if text.count(published) != times:
            raise EngineError(f"{relative} of this FerretDB version is not the one the build changes; set "
                              "QILU_FERRETDB_VERSION to v1.24.2 or run your own FerretDB (QILU_MONGODB_URL)")
        path.write_text(text.replace(published, built))
    sources = Path(__file__).parent / "ferretdb"
    for name, relative in SQLITE_SOURCES:
        shutil.copyfile(sources / name, src / relative)


def ferretdb_argv(binary: Path, settings: Settings) -> list[str]:
    sqlite_dir = settings.path("ferretdb")
    state_dir = settings.path("ferretdb-state")
    sqlite_dir.mkdir(parents=True, exist_ok=True)
    state_dir.mkdir(parents=True, exist_ok=True)
    return [
        str(binary),
        "--handler=sqlite",
        f"--sqlite-url=file:{sqlite_dir}/",
        f"--state-dir={state_dir}",
        f"--listen-addr=127.0.0.1:{settings.ferretdb_port}",
        "--telemetry=disable",  # it must never contact anything off this machine
        "--debug-addr=-",  # no extra HTTP listener; two instances must be able to run side by side
        "--log-level=warn",
        # Filters on dotted fields reach the backend, so qilu_pushdown.go can narrow them through an index.
        "--test-enable-nested-pushdown",
    ]


def start_ferretdb(settings: Settings) -> str:
    url = settings.effective_mongodb_url
    if mongodb_answers(url):
        return "already running"
    if _port_in_use(settings.ferretdb_port):
        raise EngineError(f"port {settings.ferretdb_port} is taken by something that is not a MongoDB "
                          "server; set QILU_FERRETDB_PORT to a free port")
    binary = ferretdb_binary(settings)
    installed = ""
    if binary is None:
        binary = install_ferretdb(settings)
        installed = f"installed {binary.name} {settings.ferretdb_version}, "
    log_file = _spawn(settings, "ferretdb", ferretdb_argv(binary, settings))
    _wait_until(lambda: mongodb_answers(url, 300), 30, "FerretDB", log_file)
    return installed + "started"


def stop_ferretdb(settings: Settings) -> str:
    return "stopped" if _stop(settings, "ferretdb") else "not running under qilu"


# --- Redis --------------------------------------------------------------------------------------


def _install_redis_server() -> str:
    apt = shutil.which("apt-get")
    if apt is None:
        raise EngineError("redis-server is not installed and there is no apt-get: install Redis or set "
                          "QILU_REDIS_URL to a running Redis")
    for argv in ([apt, "install", "-y", "-q", "redis-server"], [apt, "update", "-q"],
                 [apt, "install", "-y", "-q", "redis-server"]):
        done = subprocess.run(argv, capture_output=True, text=True,
                              env={**os.environ, "DEBIAN_FRONTEND": "noninteractive"})
        if argv[1] == "install" and done.returncode == 0:
            break
    path = shutil.which("redis-server")
    if path is None:
        raise EngineError(f"installing redis-server with apt-get failed:\n{done.stderr[-2000:]}\n"
                          "Install Redis or set QILU_REDIS_URL to a running Redis.")
    return path


def start_redis(settings: Settings) -> str:
    url = settings.redis_url
    if redis_answers(url):
        return "already running"
    parsed = urlparse(url)
    host, port = parsed.hostname or "127.0.0.1", parsed.port or 6379
    if host not in LOOPBACK_HOSTS:
        raise EngineError(f"Redis at {host}:{port} (QILU_REDIS_URL) does not answer; qilu only starts a Redis "
                          "of its own on 127.0.0.1")
    if _port_in_use(port):
        raise EngineError(f"port {port} is taken by something that is not Redis; point QILU_REDIS_URL elsewhere")
    binary = shutil.which("redis-server")
    installed = ""
    if binary is None:
        binary = _install_redis_server()
        installed = "installed redis-server, "
    data_dir = settings.path("redis")
    data_dir.mkdir(parents=True, exist_ok=True)
    argv = [binary, "--bind", "127.0.0.1", "--port", str(port), "--dir", str(data_dir),
            "--daemonize", "no", "--save", "60 1000", "--appendonly", "no", "--protected-mode", "yes",
            # Broker, replay guards and pub/sub keep working when a snapshot cannot be written (a full disk).
            "--stop-writes-on-bgsave-error", "no"]
    log_file = _spawn(settings, "redis", argv)
    _wait_until(lambda: redis_answers(url, 0.3), 15, "Redis", log_file)
    return installed + "started"


def stop_redis(settings: Settings) -> str:
    return "stopped" if _stop(settings, "redis") else "not running under qilu"


# --- the CLI's verbs ------------------------------------------------------------------------------


def services_up(settings: Settings) -> dict[str, str]:
    result = {}
    if settings.embedded_mongodb:
        result["mongodb"] = "FerretDB " + start_ferretdb(settings)
    elif mongodb_answers(settings.effective_mongodb_url, 3000):
        result["mongodb"] = "external (QILU_MONGODB_URL), answers"
    else:
        raise EngineError("QILU_MONGODB_URL is set but nothing answers there; qilu starts nothing when it is set")
    result["redis"] = "Redis " + start_redis(settings)
    return result


def services_down(settings: Settings) -> dict[str, str]:
    return {"mongodb": stop_ferretdb(settings), "redis": stop_redis(settings)}


def services_status(settings: Settings) -> list[EngineStatus]:
    mongo_url = settings.effective_mongodb_url
    ferret_pid = _managed_pid(settings, "ferretdb")
    redis_pid = _managed_pid(settings, "redis")
    binary = ferretdb_binary(settings)
    return [
        EngineStatus("mongodb", mongo_url, mongodb_answers(mongo_url), ferret_pid is not None, ferret_pid,
                     "external" if not settings.embedded_mongodb
                     else f"FerretDB {settings.ferretdb_version}, binary {'found' if binary else 'not installed'}"),
        EngineStatus("redis", settings.redis_url, redis_answers(settings.redis_url), redis_pid is not None,
                     redis_pid, "redis-server " + ("found" if shutil.which("redis-server") else "not installed")),
    ]


def status_as_dicts(settings: Settings) -> list[dict]:
    return [asdict(s) for s in services_status(settings)]
