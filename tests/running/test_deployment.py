"""The production path cannot rot unseen: the image's package builds from exactly what the
Dockerfile copies, docker-compose.yml and the proxy in front of its workers agree, and the
Kafka version is one fact (the embedded broker, its pom and the compose file).

No Docker engine runs in CI (and no compose client is installed): `docker build` and
`docker compose config` run only where they work, and are reported as skipped otherwise;
the wheel build and the structural checks always run.
"""

from __future__ import annotations

import fnmatch
import os
import re
import shutil
import subprocess
import sys
import textwrap
import tomllib
import zipfile
from pathlib import Path
from typing import Any

import crossplane
import pytest
import yaml

from stream_app.core.settings import Settings
from stream_app.running.kafka_local import KAFKA_VERSION, POM

ROOT = Path(__file__).resolve().parents[2]
COMPOSE_FILE = ROOT / "docker-compose.yml"
NGINX_CONF = ROOT / "deploy" / "nginx.conf"
API_PORT = 8000  # the image's PORT (Dockerfile ENV)


def compose_client() -> list[str] | None:
    """`docker compose` or `docker-compose`, when installed (no engine is needed)."""
    for command in (["docker", "compose"], ["docker-compose"]):
        if (
            shutil.which(command[0])
            and subprocess.run([*command, "version"], capture_output=True, check=False).returncode
            == 0
        ):
            return command
    return None


def docker_engine() -> bool:
    """A Docker engine answers (`docker info`), so `docker build` can run."""
    return (
        shutil.which("docker") is not None
        and subprocess.run(["docker", "info"], capture_output=True, check=False).returncode == 0
    )


# --- the image: what the Dockerfile copies ------------------------------------------------


def dockerfile_copies() -> list[tuple[str, str]]:
    """(source, destination) of every COPY line that takes files from the build context
    (`COPY --from=<stage>` copies between stages and is left out; flags are dropped)."""
    copies = []
    for line in (ROOT / "Dockerfile").read_text().splitlines():
        words = line.split()
        if not words or words[0].upper() != "COPY":
            continue
        assert not words[1].startswith("["), "JSON-form COPY: extend dockerfile_copies"
        if any(word.startswith("--from=") for word in words):
            continue
        *sources, dest = [word for word in words[1:] if not word.startswith("--")]
        copies += [(source, dest) for source in sources]
    return copies


def dockerignore_patterns() -> list[tuple[bool, str]]:
    """(is_exception, pattern) of .dockerignore, in order (the last match decides)."""
    path = ROOT / ".dockerignore"
    if not path.exists():
        return []
    patterns = []
    for raw in path.read_text().splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        negate = line.startswith("!")
        patterns.append((negate, line.lstrip("!").strip("/")))
    return patterns


def ignored(relative: str, patterns: list[tuple[bool, str]]) -> bool:
    """Whether `relative` (a path in the build context) is left out by .dockerignore.

    The subset of Docker's rules this repository uses: a pattern matches a path or any of
    its parent folders, `**/` also matches at the top, `!` re-includes.
    """
    parts = relative.split("/")
    prefixes = ["/".join(parts[: i + 1]) for i in range(len(parts))]
    result = False
    for negate, pattern in patterns:
        candidates = [pattern] + ([pattern[3:]] if pattern.startswith("**/") else [])
        if any(fnmatch.fnmatchcase(p, c) for p in prefixes for c in candidates):
            result = not negate
    return result


def build_context(target: Path) -> Path:
    """Lay out in `target` what the Dockerfile's COPY lines put in the build stage."""
    patterns = dockerignore_patterns()
    for source, dest in dockerfile_copies():
        origin = ROOT / source
        assert origin.exists(), f"the Dockerfile copies {source!r}, which does not exist"
        files = [origin] if origin.is_file() else sorted(p for p in origin.rglob("*"))
        for path in files:
            relative = path.relative_to(ROOT).as_posix()
            if path.is_dir() or ignored(relative, patterns):
                continue
            if origin.is_file():
                into_dir = dest.endswith("/") or dest in (".", "./")
                destination = target / dest / path.name if into_dir else target / dest
            else:
                destination = target / dest / path.relative_to(origin)
            destination.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(path, destination)
    return target


def shipped_files(packages: list[str]) -> list[str]:
    """The files of `packages` (pyproject's list) that the wheel must hold: every file in
    each package's folder (not its subfolders: those are packages of their own) except
    caches and README.md (documentation for people reading the repository)."""
    wanted = []
    for package in packages:
        folder = ROOT / package.replace(".", "/")
        for path in sorted(folder.iterdir()):
            if path.is_file() and path.suffix != ".pyc" and path.name != "README.md":
                wanted.append(path.relative_to(ROOT).as_posix())
    return wanted


_IMPORT_EVERY_MODULE = textwrap.dedent(
    """
    import importlib, importlib.util, sys
    from pathlib import Path
    site, repo = Path(sys.argv[1]).resolve(), Path(sys.argv[2]).resolve()
    main_modules, modules = [], []
    for name in sys.argv[3:]:
        (main_modules if name.endswith(".__main__") else modules).append(name)
    for name in modules:
        module = importlib.import_module(name)
        where = Path(module.__file__).resolve()
        assert where.is_relative_to(site), f"{name} was imported from {where}, not the wheel"
    # `python -m X` entry points: found in the wheel, and imported when their main() is
    # guarded by `__name__ == "__main__"` (running them would start services).
    for name in main_modules:
        spec = importlib.util.find_spec(name)
        assert spec is not None and Path(spec.origin).resolve().is_relative_to(site), name
        if '__name__ == "__main__"' in Path(spec.origin).read_text():
            importlib.import_module(name)
    from cli.main import run  # the `insight` console script
    assert callable(run)
    # Nothing was taken from the repository (a package the wheel lacks, imported by one it
    # has, would come from there through the editable install).
    env = Path(sys.prefix).resolve()
    for name, module in list(sys.modules.items()):
        where = getattr(module, "__file__", None)
        if where is None:
            continue
        where = Path(where).resolve()
        from_repo = where.is_relative_to(repo) and not where.is_relative_to(env)
        assert not from_repo, f"{name} was imported from the repository: {where}"
    print(f"imported {len(modules)} modules, found {len(main_modules)} entry modules")
    """
)


def test_the_image_builds_the_package_from_exactly_what_the_dockerfile_copies(
    tmp_path: Path,
) -> None:
    # What the build stage sees: only the files COPY brought in (less .dockerignore), built
    # with the same command as the Dockerfile's RUN line.
    context = build_context(tmp_path / "src")
    done = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "-w", str(tmp_path / "dist")]
        + [str(context)],
        capture_output=True,
        text=True,
        check=False,
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    (wheel,) = (tmp_path / "dist").glob("*.whl")
    site = tmp_path / "site"
    with zipfile.ZipFile(wheel) as archive:
        names = set(archive.namelist())
        archive.extractall(site)

    # Every package pyproject lists, with every module and data file (the web page's files).
    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text())
    packages = pyproject["tool"]["setuptools"]["packages"]
    missing = [name for name in shipped_files(packages) if name not in names]
    assert not missing, f"not in the wheel: {missing}"
    for page_file in ("index.html", "app.js", "style.css"):
        assert f"api/static/{page_file}" in names, page_file
    (entry_points,) = [name for name in names if name.endswith(".dist-info/entry_points.txt")]
    assert "insight = cli.main:run" in (site / entry_points).read_text()

    # Every module imports from the wheel alone (-P: not from the working folder; the
    # check fails if one came from the repository through the editable install).
    modules = sorted(
        name[: -len(".py")].replace("/", ".").removesuffix(".__init__")
        for name in names
        if name.endswith(".py")
    )
    imported = subprocess.run(
        [sys.executable, "-P", "-c", _IMPORT_EVERY_MODULE, str(site), str(ROOT), *modules],
        cwd=tmp_path,
        env={**os.environ, "PYTHONPATH": str(site)},
        capture_output=True,
        text=True,
        check=False,
        timeout=120,
    )
    assert imported.returncode == 0, imported.stderr[-3000:]
    assert {"stream_app.__main__", "simulator.__main__", "api.app", "cli.main"} <= set(modules)


def test_dockerignore_keeps_secrets_and_local_state_out_of_the_build_context() -> None:
    patterns = dockerignore_patterns()
    for path in (".env", ".git/config", ".venv/bin/python", "data/kafka/meta.properties"):
        assert ignored(path, patterns), path
    for path in ("stream_app/__pycache__/service.cpython-311.pyc", "api/static/app.js"):
        assert ignored(path, patterns) == path.endswith(".pyc"), path


def test_docker_builds_the_image() -> None:
    if not docker_engine():
        pytest.skip("no Docker engine here (`docker info` fails); the wheel test above builds")
    done = subprocess.run(
        ["docker", "build", "-q", "-t", "insight-stream:test-deployment", str(ROOT)],
        capture_output=True,
        text=True,
        check=False,
        timeout=900,
    )
    assert done.returncode == 0, done.stderr[-3000:]


# --- docker-compose.yml and the proxy ---------------------------------------------------


def compose() -> dict[str, Any]:
    loaded = yaml.safe_load(COMPOSE_FILE.read_text())  # resolves the anchors and `<<` merges
    assert isinstance(loaded, dict)
    return loaded


def workers(services: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """The services built from this repository's Dockerfile."""
    return {name: spec for name, spec in services.items() if "build" in spec}


def nginx_directives(tmp_path: Path) -> list[dict[str, Any]]:
    """deploy/nginx.conf parsed where nginx:alpine includes it (inside `http`), checked for
    syntax, unknown directives, contexts and argument counts."""
    wrapper = tmp_path / "nginx.conf"
    wrapper.write_text(f"events {{}}\nhttp {{\n    include {NGINX_CONF};\n}}\n")
    parsed = crossplane.parse(str(wrapper), check_ctx=True, check_args=True, strict=True)
    assert parsed["status"] == "ok", parsed["errors"]
    (included,) = [c for c in parsed["config"] if Path(c["file"]) == NGINX_CONF]
    directives: list[dict[str, Any]] = included["parsed"]
    return directives


def find(directives: list[dict[str, Any]], name: str) -> list[dict[str, Any]]:
    return [d for d in directives if d["directive"] == name]


def test_pom_and_compose_use_the_kafka_version_the_suite_runs_on() -> None:
    pom = re.search(r"<kafka.version>([^<]+)</kafka.version>", POM.read_text())
    assert pom is not None and pom.group(1) == KAFKA_VERSION
    images = re.findall(r"image:\s*apache/kafka:(\S+)", COMPOSE_FILE.read_text())
    assert images == [KAFKA_VERSION]


def test_compose_runs_kafka_and_several_ready_probed_workers() -> None:
    services = compose()["services"]
    declared_volumes = set(compose()["volumes"])
    kafka = services["kafka"]
    kafka_env = kafka["environment"]
    # The topics live in the volume, not in the image's default log.dirs under /tmp.
    assert f"kafka-data:{kafka_env['KAFKA_LOG_DIRS']}" in kafka["volumes"]
    broker = kafka_env["KAFKA_ADVERTISED_LISTENERS"].split("://", 1)[1]

    found = workers(services)
    assert len(found) >= 2, "the compose file shows several workers"
    urls, data_volumes = set(), set()
    shutdown_grace = Settings.model_fields["batch_shutdown_timeout_seconds"].default
    for name, spec in found.items():
        env = spec["environment"]
        assert env["KAFKA_BOOTSTRAP_SERVERS"] == broker, name  # one cluster for all
        assert env.get("PORT", str(API_PORT)) == str(API_PORT), name
        urls.add(env["ADVERTISED_URL"])
        assert env["ADVERTISED_URL"] == f"http://{name}:{API_PORT}", name
        (volume,) = [v for v in spec["volumes"] if v.endswith(":/data")]
        volume_name = volume.split(":")[0]
        assert volume_name in declared_volumes, name  # a named volume: state kept on recreate
        data_volumes.add(volume_name)
        assert "/api/v1/ready" in " ".join(spec["healthcheck"]["test"]), name
        assert spec["depends_on"]["kafka"]["condition"] == "service_healthy", name
        assert spec["restart"] in ("unless-stopped", "always", "on-failure"), name
        # SIGKILL only after calls in flight had their time to finish.
        assert int(spec["stop_grace_period"].rstrip("s")) > shutdown_grace, name
        assert "ports" not in spec, f"{name} publishes a port: the proxy is the one port"
    assert len(urls) == len(found), "every worker needs its own ADVERTISED_URL"
    assert len(data_volumes) == len(found), "every worker needs its own data volume"


def test_the_proxy_is_the_one_port_and_round_robins_over_every_worker(tmp_path: Path) -> None:
    services = compose()["services"]
    names = set(workers(services))
    (proxy,) = [
        spec for spec in services.values() if str(spec.get("image", "")).startswith("nginx")
    ]
    assert f"./{NGINX_CONF.relative_to(ROOT)}:/etc/nginx/conf.d/default.conf:ro" in proxy["volumes"]
    (published,) = proxy["ports"]
    container_port = published.rsplit(":", 1)[1]
    # Started once every worker is ready.
    assert {
        name for name, dep in proxy["depends_on"].items() if dep["condition"] == "service_healthy"
    } == names
    # `resolve` (re-reading worker addresses) is in nginx from 1.27.3 on.
    version = re.match(r"nginx:(\d+)\.(\d+)", proxy["image"])
    assert version is not None and (int(version[1]), int(version[2])) >= (1, 28), proxy["image"]

    directives = nginx_directives(tmp_path)
    assert find(directives, "resolver")[0]["args"][0] == "127.0.0.11"  # Docker's DNS
    (upstream,) = find(directives, "upstream")
    servers = find(upstream["block"], "server")
    assert {s["args"][0] for s in servers} == {f"{name}:{API_PORT}" for name in names}
    assert len(servers) == len(names)
    assert all("resolve" in s["args"] for s in servers)
    assert not find(upstream["block"], "hash") and not find(upstream["block"], "ip_hash")

    (server,) = find(directives, "server")
    block = server["block"]
    assert find(block, "listen")[0]["args"] == [container_port]
    # Submits of any size stream through; event streams and downloads are not held back.
    assert find(block, "client_max_body_size")[0]["args"] == ["0"]
    assert find(block, "proxy_request_buffering")[0]["args"] == ["off"]
    assert find(block, "proxy_buffering")[0]["args"] == ["off"]
    # Only connection failures move a request on and count against a worker: the API's own
    # 503s (every worker answers them during a rebalance) would empty the rotation.
    assert find(block, "proxy_next_upstream")[0]["args"] == ["error", "timeout"]
    (location,) = find(block, "location")
    assert find(location["block"], "proxy_pass")[0]["args"] == [f"http://{upstream['args'][0]}"]


def test_docker_compose_accepts_the_file() -> None:
    client = compose_client()
    if client is None:
        pytest.skip("no `docker compose` client here; the structure is checked above")
    done = subprocess.run(
        [*client, "-f", str(COMPOSE_FILE), "config", "--quiet"],
        capture_output=True,
        text=True,
        check=False,
    )
    assert done.returncode == 0, done.stderr
