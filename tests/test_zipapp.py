"""dist/clasp.pyz: built from clasp/ only, runs in isolated mode on every CPython 3.10-3.13 found,
serves a translated request, and carries the container's ENTRYPOINT and HEALTHCHECK."""

from __future__ import annotations

import glob
import http.client
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
import zipfile
from pathlib import Path

import pytest

from harness import FakeUpstream, LoopThread, completion, free_port, json_reply

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tools"))
try:
    from build_zipapp import build
finally:
    sys.path.remove(str(ROOT / "tools"))

from clasp import __version__


def _interpreters() -> list[str]:
    found = {}
    for minor in ("10", "11", "12", "13"):
        for exe in sorted(glob.glob(os.path.expanduser(f"~/.pyenv/versions/3.{minor}.*/bin/python"))):
            found[f"3.{minor}"] = exe  # newest patch release of each minor version
    if not found:  # no pyenv: at least the running interpreter
        found[f"{sys.version_info.major}.{sys.version_info.minor}"] = sys.executable
    return [found[k] for k in sorted(found)]


INTERPRETERS = _interpreters()


@pytest.fixture(scope="module")
def pyz(tmp_path_factory) -> Path:
    return build(tmp_path_factory.mktemp("zipapp") / "clasp.pyz")


@pytest.fixture(scope="module")
def upstream():
    lt = LoopThread()
    up = FakeUpstream(lt, lambda seen: json_reply(completion("Hello from the zipapp")))
    yield up
    up.close()
    lt.stop()


def _clean_env(tmp: Path, **extra: str) -> dict:
    # No PYTHONPATH and a home without config files: the archive must stand on its own.
    env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": str(tmp), "LANG": "C.UTF-8"}
    env.update(extra)
    return env


def test_archive_holds_only_the_package(pyz: Path) -> None:
    with open(pyz, "rb") as f:
        assert f.readline() == b"#!/usr/bin/env python3\n"
    assert os.access(pyz, os.X_OK)
    with zipfile.ZipFile(pyz) as z:
        names = z.namelist()
        infos = z.infolist()
        main = z.read("__main__.py").decode()
    assert "__main__.py" in names and "clasp/cli.py" in names and "clasp/launcher.py" in names
    assert all(n == "__main__.py" or n.startswith("clasp/") for n in names), names
    assert not [n for n in names if "test" in n.split("/")[-1] or "__pycache__" in n or n.endswith(".pyc")]
    assert all(i.compress_type == zipfile.ZIP_DEFLATED for i in infos)
    # Every source file of the package is in (nothing forgotten by the builder).
    expected = {p.relative_to(ROOT).as_posix() for p in (ROOT / "clasp").rglob("*.py")
                if "__pycache__" not in p.parts}
    assert expected == set(names) - {"__main__.py"}
    assert "from clasp.cli import main" in main and "sys.exit(main())" in main


def test_builds_are_identical(pyz: Path, tmp_path: Path) -> None:
    assert build(tmp_path / "again.pyz").read_bytes() == pyz.read_bytes()


@pytest.mark.parametrize("python", INTERPRETERS)
def test_version_in_isolated_mode(pyz: Path, python: str, tmp_path: Path) -> None:
    proc = subprocess.run([python, "-I", str(pyz), "-version"], env=_clean_env(tmp_path), cwd=tmp_path,
                          capture_output=True, text=True, timeout=20)
    assert proc.returncode == 0, proc.stderr
    match = re.fullmatch(r"clasp (\S+) \(python (3\.\d+\.\d+)\)\n", proc.stdout)
    assert match and match.group(1) == __version__, proc.stdout
    assert python.split("/versions/")[-1].startswith(match.group(2)) or python == sys.executable


@pytest.fixture(scope="module")
def compiled_pyz(tmp_path_factory) -> Path:
    return build(tmp_path_factory.mktemp("zipapp-pyc") / "clasp.pyz", compile_bytecode=True)


def test_compiled_archive_adds_bytecode_for_this_python_only(compiled_pyz: Path, pyz: Path) -> None:
    with zipfile.ZipFile(compiled_pyz) as z:
        names = set(z.namelist())
        magic = z.read("clasp/cli.pyc")[:4]
    with zipfile.ZipFile(pyz) as z:
        sources = set(z.namelist())
    assert names == sources | {n + "c" for n in sources if n.startswith("clasp/")}
    import importlib.util
    assert magic == importlib.util.MAGIC_NUMBER


@pytest.mark.parametrize("flags,has_bytecode", [([], True), (["--no-compile"], False)])
def test_build_command_adds_bytecode_unless_told_not_to(flags: list, has_bytecode: bool, tmp_path: Path) -> None:
    out = tmp_path / "clasp.pyz"
    proc = subprocess.run([sys.executable, str(ROOT / "tools" / "build_zipapp.py"), "-o", str(out), *flags],
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    with zipfile.ZipFile(out) as z:
        assert ("clasp/cli.pyc" in z.namelist()) is has_bytecode


@pytest.mark.parametrize("python", INTERPRETERS)
def test_compiled_archive_runs_everywhere(compiled_pyz: Path, python: str, tmp_path: Path) -> None:
    # Other versions reject the foreign bytecode and compile the sources instead.
    proc = subprocess.run([python, "-I", str(compiled_pyz), "-version"], env=_clean_env(tmp_path),
                          cwd=tmp_path, capture_output=True, text=True, timeout=20)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.startswith(f"clasp {__version__} (python 3.")


def test_exit_codes_survive_the_archive(pyz: Path, tmp_path: Path) -> None:
    proc = subprocess.run([sys.executable, "-I", str(pyz), "-no-such-flag"], env=_clean_env(tmp_path),
                          cwd=tmp_path, capture_output=True, text=True, timeout=20)
    assert proc.returncode == 2
    assert "unknown flag -no-such-flag" in proc.stderr


# Imports every module of the archive, then lists the modules this loaded from anywhere but the
# standard library or the archive itself (site-packages counts as third-party).
_PROBE = r"""
import sys
preloaded = set(sys.modules)  # whatever site's .pth hooks loaded before clasp is not clasp's doing
import importlib, json, sysconfig, zipfile
pyz = sys.argv[1]
sys.path.insert(0, pyz)
with zipfile.ZipFile(pyz) as z:
    mods = [n[:-3].replace("/", ".").removesuffix(".__init__") for n in z.namelist()
            if n.startswith("clasp/") and n.endswith(".py") and not n.endswith("__main__.py")]
for m in mods:
    importlib.import_module(m)
paths = sysconfig.get_paths()
third = tuple({paths["purelib"], paths["platlib"]})
std = tuple({paths["stdlib"], paths["platstdlib"]})
bad = []
for name, mod in sorted(sys.modules.items()):
    if name in preloaded:
        continue
    spec = getattr(mod, "__spec__", None)
    origin = getattr(spec, "origin", None) or getattr(mod, "__file__", None)
    if origin is None or origin in ("built-in", "frozen"):
        continue
    if origin.startswith(pyz):
        continue
    if origin.startswith(third) or not origin.startswith(std):
        bad.append((name, origin))
print(json.dumps({"imported": len(mods), "bad": bad}))
"""


@pytest.mark.parametrize("python", INTERPRETERS)
def test_archive_imports_only_the_standard_library(pyz: Path, python: str, tmp_path: Path) -> None:
    # -S: no site-packages on sys.path at all, so any third-party import fails outright.
    proc = subprocess.run([python, "-I", "-S", "-c", _PROBE, str(pyz)], env=_clean_env(tmp_path), cwd=tmp_path,
                          capture_output=True, text=True, timeout=20)
    assert proc.returncode == 0, proc.stderr
    result = json.loads(proc.stdout)
    assert result["imported"] >= 20
    assert result["bad"] == []


def _wait_healthy(port: int, proc: subprocess.Popen, timeout: float = 15) -> float:
    start = time.monotonic()
    while True:
        try:
            conn = http.client.HTTPConnection("127.0.0.1", port, timeout=2)
            conn.request("GET", "/health")
            status = conn.getresponse().status
            conn.close()
            if status == 200:
                return time.monotonic() - start
        except OSError:
            pass
        assert proc.poll() is None, proc.communicate()
        assert time.monotonic() - start < timeout, "the zipapp never became healthy"
        time.sleep(0.02)


def _dockerfile_exec(instruction: str) -> list[str]:
    """The JSON (exec-form) argument list of a Dockerfile instruction (continuations joined)."""
    text = (ROOT / "Dockerfile").read_text(encoding="utf-8").replace("\\\n", " ")
    line = next(l for l in text.splitlines() if l.startswith(instruction + " "))
    rest = line[len(instruction):].strip()
    if instruction == "HEALTHCHECK":
        rest = rest[rest.index(" CMD ") + 5:].strip()
    return json.loads(rest)  # shell form would not parse: distroless has no shell


def _image_command(argv: list[str], python: str, pyz: Path) -> list[str]:
    # The image runs `python3 /app/clasp.pyz`; here the same line with a local interpreter/archive.
    assert argv[:2] == ["python3", "/app/clasp.pyz"]
    return [python, str(pyz), *argv[2:]]


def test_dockerfile_shape() -> None:
    text = (ROOT / "Dockerfile").read_text(encoding="utf-8")
    stages = re.findall(r"^FROM (\S+)", text, re.MULTILINE)
    assert stages == ["python:3.11-slim", "gcr.io/distroless/python3-debian12:nonroot"]
    final = text[text.index("FROM gcr.io/distroless"):]
    assert re.findall(r"^COPY (.+)$", final, re.MULTILINE) == ["--from=builder /out/clasp.pyz /app/clasp.pyz"]
    assert re.search(r"^USER nonroot$", final, re.MULTILINE)
    assert "CLASP_HOST=0.0.0.0" in final and re.search(r"^EXPOSE 8080$", final, re.MULTILINE)
    assert _dockerfile_exec("ENTRYPOINT") == ["python3", "/app/clasp.pyz"]
    assert _dockerfile_exec("HEALTHCHECK") == ["python3", "/app/clasp.pyz", "healthcheck"]
    # The builder runs the same build tool the tests use.
    assert "tools/build_zipapp.py --compile --output /out/clasp.pyz" in text


def test_builder_stage_works_from_the_docker_context(tmp_path: Path) -> None:
    # The build context holds only what .dockerignore lets through; the builder's RUN line must
    # work with that alone (no pyproject, no tests, no git).
    allowed = [l[1:].rstrip("/") for l in (ROOT / ".dockerignore").read_text().splitlines() if l.startswith("!")]
    assert sorted(allowed) == ["clasp", "tools/build_zipapp.py"]
    src = tmp_path / "src"
    for rel in allowed:
        origin = ROOT / rel
        if origin.is_dir():
            shutil.copytree(origin, src / rel, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
        else:
            (src / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(origin, src / rel)
    text = (ROOT / "Dockerfile").read_text(encoding="utf-8").replace("\\\n", " ")
    run = next(l for l in text.splitlines() if l.startswith("RUN "))[4:]
    out = tmp_path / "out"
    run = run.replace("/out/", f"{out}/").replace("python3 ", f"{sys.executable} ")
    proc = subprocess.run(run, shell=True, cwd=src, env=_clean_env(tmp_path), capture_output=True, text=True,
                          timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert f"clasp {__version__} (python" in proc.stdout
    with zipfile.ZipFile(out / "clasp.pyz") as z:
        assert "clasp/cli.pyc" in z.namelist()


@pytest.mark.parametrize("python", INTERPRETERS)
def test_zipapp_serves_a_request(pyz: Path, python: str, upstream: FakeUpstream, tmp_path: Path) -> None:
    port = free_port()
    entry = _image_command(_dockerfile_exec("ENTRYPOINT"), python, pyz)
    health = _image_command(_dockerfile_exec("HEALTHCHECK"), python, pyz)
    # The image's environment, except that tests listen on loopback only.
    env = _clean_env(tmp_path, CLASP_HOST="127.0.0.1", CLASP_PORT=str(port), CUSTOM_BASE_URL=upstream.url)
    proc = subprocess.Popen([*entry[:1], "-I", *entry[1:], "-provider", "custom", "-model", "zip-model"],
                            env=env, cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        _wait_healthy(port, proc)
        # The container HEALTHCHECK command, as Docker runs it (port from CLASP_PORT).
        check = subprocess.run(health, env=env, cwd=tmp_path, capture_output=True, text=True, timeout=20)
        assert check.returncode == 0, check.stderr

        before = len(upstream.requests)
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
        body = {"model": "claude-haiku-4-5", "max_tokens": 64, "messages": [{"role": "user", "content": "hi"}]}
        conn.request("POST", "/v1/messages", body=json.dumps(body),
                      headers={"content-type": "application/json", "x-api-key": "any"})
        r = conn.getresponse()
        message = json.loads(r.read())
        conn.close()
        assert r.status == 200, message
        assert message["type"] == "message" and message["role"] == "assistant"
        assert message["model"] == "claude-haiku-4-5"
        assert message["content"] == [{"type": "text", "text": "Hello from the zipapp"}]
        assert message["stop_reason"] == "end_turn"
        assert message["usage"]["input_tokens"] == 12 and message["usage"]["output_tokens"] == 5
        assert len(upstream.requests) == before + 1
        assert upstream.requests[-1].json()["model"] == "zip-model"
    finally:
        proc.send_signal(signal.SIGTERM)
        out, err = proc.communicate(timeout=15)
    assert proc.returncode == 0, err
    assert "/v1/messages" in err  # the access log goes to stderr (docker logs)
    # Nothing listens any more: the healthcheck now fails.
    check = subprocess.run(health, env=env, cwd=tmp_path, capture_output=True, text=True, timeout=20)
    assert check.returncode == 1
    assert "unreachable" in check.stderr
