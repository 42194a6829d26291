"""`clasp claude ...`: a fake `claude` on PATH checks what the launcher gives it and talks to the
private proxy, which talks to a fake upstream."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from harness import FakeUpstream, LoopThread, completion, json_reply

ROOT = Path(__file__).resolve().parent.parent

# The fake Claude Code: records its argv and environment, calls /health and POST /v1/messages
# on ANTHROPIC_BASE_URL the way Claude Code does (x-api-key), then exits with FAKE_EXIT, or
# with FAKE_MODE=wait, announces itself and waits for a signal.
FAKE_CLAUDE = r'''
import http.client, json, os, signal, sys, time, urllib.parse
report = {"argv": sys.argv[1:], "env": {k: os.environ.get(k) for k in (
    "ANTHROPIC_BASE_URL", "ANTHROPIC_API_KEY", "ANTHROPIC_AUTH_TOKEN", "CLAUDE_CODE_USE_BEDROCK",
    "KEEP_ME", "CLASP_STATUSLINE_KEY")}}
out = os.environ["FAKE_REPORT"]
def save():
    with open(out + ".tmp", "w") as f:
        json.dump(report, f)
    os.replace(out + ".tmp", out)
if os.environ.get("FAKE_MODE") == "wait":
    def on_signal(signum, frame):
        report["signal"] = signum
        save()
        sys.exit(int(os.environ["FAKE_EXIT"]))
    signal.signal(signal.SIGINT, on_signal)
    signal.signal(signal.SIGHUP, on_signal)  # SIGTERM keeps its default: the child dies of it
    report["waiting"] = True
    save()
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline:
        time.sleep(0.05)
    sys.exit(99)
url = urllib.parse.urlsplit(os.environ["ANTHROPIC_BASE_URL"])
conn = http.client.HTTPConnection(url.hostname, url.port, timeout=10)
conn.request("GET", "/health")
r = conn.getresponse()
report["health"] = [r.status, json.loads(r.read())]
body = json.dumps({"model": "claude-sonnet-4-5", "max_tokens": 100,
                   "messages": [{"role": "user", "content": "hi"}]})
conn.request("POST", "/v1/messages?beta=true", body=body,
              headers={"content-type": "application/json", "anthropic-version": "2023-06-01",
                       "x-api-key": os.environ["ANTHROPIC_API_KEY"]})
r = conn.getresponse()
report["messages"] = [r.status, json.loads(r.read())]
report["other_keys"] = []  # what anything else on the machine gets (a web page knows no key)
for other in ({"x-api-key": "clasp"}, {}):
    conn.request("POST", "/v1/messages", body=body, headers={"content-type": "application/json", **other})
    r = conn.getresponse()
    report["other_keys"].append([r.status, json.loads(r.read())["error"]["type"]])
settings = json.loads(sys.argv[2]) if sys.argv[1:2] == ["--settings"] else {}
if "statusLine" in settings:  # run the status line as Claude Code does: a shell, JSON on stdin
    import subprocess
    command = settings["statusLine"]["command"]
    done = subprocess.run(command, shell=True, input='{"session_id": "s1", "model": {"id": "x"}}',
                          capture_output=True, text=True, timeout=20)
    report["statusline"] = [done.returncode, done.stdout, done.stderr]
save()
sys.exit(int(os.environ.get("FAKE_EXIT", "0")))
'''


@pytest.fixture(scope="module")
def upstream():
    lt = LoopThread()
    up = FakeUpstream(lt, lambda seen: json_reply(completion("Hi from upstream")))
    yield up
    up.close()
    lt.stop()


@pytest.fixture
def fake_claude(tmp_path: Path) -> Path:
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    script = bin_dir / "claude"
    script.write_text(f"#!{sys.executable}\n{FAKE_CLAUDE}", encoding="utf-8")
    script.chmod(0o755)
    return bin_dir


def launcher_env(tmp_path: Path, upstream: FakeUpstream | None, path: str, **extra: str) -> dict:
    env = {"PATH": path, "HOME": str(tmp_path / "home"), "XDG_CACHE_HOME": str(tmp_path / "cache"),
           "PYTHONPATH": str(ROOT), "FAKE_REPORT": str(tmp_path / "report.json"), "LANG": "C.UTF-8"}
    if upstream is not None:
        env.update(PROVIDER="custom", CUSTOM_BASE_URL=upstream.url, CLASP_MODEL="up-model")
    env.update(extra)
    return env


def run_launcher(args: list[str], env: dict, cwd: Path, cmd: list[str] | None = None,
                 timeout: float = 20) -> subprocess.CompletedProcess:
    cmd = cmd or [sys.executable, "-m", "clasp", "claude"]
    return subprocess.run([*cmd, *args], env=env, cwd=cwd, stdin=subprocess.DEVNULL,
                          capture_output=True, text=True, timeout=timeout)


def read_report(tmp_path: Path) -> dict:
    return json.loads((tmp_path / "report.json").read_text())


def test_claude_runs_against_the_proxy_and_its_exit_code_is_returned(tmp_path, fake_claude, upstream):
    env = launcher_env(tmp_path, upstream, str(fake_claude), FAKE_EXIT="7", KEEP_ME="yes",
                       ANTHROPIC_AUTH_TOKEN="user-token", CLAUDE_CODE_USE_BEDROCK="1")
    before = len(upstream.requests)
    args = ["-p", "say hi", "--model", "claude-sonnet-4-5", "-port", "9"]  # all of them are claude's
    proc = run_launcher(args, env, tmp_path)
    assert proc.returncode == 7, proc.stderr
    report = read_report(tmp_path)
    assert report["argv"][2:] == args  # after the status line's --settings
    child_env = report["env"]
    assert child_env["ANTHROPIC_BASE_URL"].startswith("http://127.0.0.1:")
    # no auth configured: the private proxy still requires a key, random for this session
    assert child_env["ANTHROPIC_API_KEY"].endswith("-clasp-session-proxy")
    assert len(child_env["ANTHROPIC_API_KEY"]) > 40
    assert child_env["ANTHROPIC_AUTH_TOKEN"] is None      # would override the key
    assert child_env["CLAUDE_CODE_USE_BEDROCK"] is None   # would bypass ANTHROPIC_BASE_URL
    assert child_env["KEEP_ME"] == "yes"                  # the rest of the environment is passed on
    assert report["health"][0] == 200 and report["health"][1]["status"] == "ok"
    status, message = report["messages"]
    assert status == 200, message
    assert message["type"] == "message" and message["model"] == "claude-sonnet-4-5"
    assert message["content"] == [{"type": "text", "text": "Hi from upstream"}]
    assert message["stop_reason"] == "end_turn"
    assert len(upstream.requests) == before + 1
    sent = upstream.requests[-1]
    assert sent.target == "/v1/chat/completions" and sent.json()["model"] == "up-model"
    # The terminal stays Claude Code's: the access log went to the cache file.
    assert proc.stdout == "" and proc.stderr == ""
    log = (tmp_path / "cache" / "clasp" / "claude-proxy.log").read_text()
    assert "/v1/messages" in log and "listening on http://127.0.0.1:" in log


def test_auth_key_is_handed_to_claude(tmp_path, fake_claude, upstream):
    env = launcher_env(tmp_path, upstream, str(fake_claude), FAKE_EXIT="0", CLASP_AUTH="true",
                       CLASP_AUTH_API_KEY="proxy-secret-123", ANTHROPIC_AUTH_TOKEN="user-token")
    proc = run_launcher([], env, tmp_path)
    assert proc.returncode == 0, proc.stderr
    report = read_report(tmp_path)
    assert report["env"]["ANTHROPIC_API_KEY"] == "proxy-secret-123"
    assert report["messages"][0] == 200                   # the proxy accepted the key
    assert "proxy-secret-123" not in (tmp_path / "cache" / "clasp" / "claude-proxy.log").read_text()


def test_private_proxy_key_is_random_per_run_and_required(tmp_path, fake_claude, upstream):
    keys = []
    for _ in range(2):
        proc = run_launcher([], launcher_env(tmp_path, upstream, str(fake_claude), FAKE_EXIT="0"), tmp_path)
        assert proc.returncode == 0, proc.stderr
        report = read_report(tmp_path)
        assert report["messages"][0] == 200                   # Claude Code's key works
        assert report["other_keys"] == [[401, "authentication_error"]] * 2  # the old placeholder, no key
        keys.append(report["env"]["ANTHROPIC_API_KEY"])
    assert keys[0] != keys[1]
    log = (tmp_path / "cache" / "clasp" / "claude-proxy.log").read_text()
    assert keys[0] not in log and keys[1] not in log


def test_unwritable_log_location_keeps_the_terminal_clean(tmp_path, fake_claude, upstream):
    blocker = tmp_path / "not-a-dir"
    blocker.write_text("")  # the cache "directory" is a file: the log cannot be created
    env = launcher_env(tmp_path, upstream, str(fake_claude), FAKE_EXIT="0", XDG_CACHE_HOME=str(blocker))
    proc = run_launcher([], env, tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert read_report(tmp_path)["messages"][0] == 200
    assert proc.stdout == "" and proc.stderr == ""


def test_missing_claude_exits_127_with_the_install_command(tmp_path, upstream):
    empty = tmp_path / "empty"
    empty.mkdir()
    proc = run_launcher(["--help"], launcher_env(tmp_path, upstream, str(empty)), tmp_path)
    assert proc.returncode == 127
    assert "npm install -g @anthropic-ai/claude-code" in proc.stderr
    assert "claude" in proc.stderr.splitlines()[0]


def test_config_error_exits_2_before_claude_runs(tmp_path, fake_claude):
    env = launcher_env(tmp_path, None, str(fake_claude), PROVIDER="nonsense")
    proc = run_launcher([], env, tmp_path)
    assert proc.returncode == 2
    assert "nonsense" in proc.stderr and "PROVIDER" in proc.stderr
    assert not (tmp_path / "report.json").exists()


def test_missing_provider_credentials_exit_2(tmp_path, fake_claude):
    env = launcher_env(tmp_path, None, str(fake_claude), PROVIDER="openai")
    proc = run_launcher([], env, tmp_path)
    assert proc.returncode == 2
    assert "OPENAI_API_KEY" in proc.stderr
    assert not (tmp_path / "report.json").exists()


def _start_waiting(tmp_path: Path, fake_claude: Path, upstream: FakeUpstream, exit_code: str):
    env = launcher_env(tmp_path, upstream, str(fake_claude), FAKE_MODE="wait", FAKE_EXIT=exit_code)
    proc = subprocess.Popen([sys.executable, "-m", "clasp", "claude"], env=env, cwd=tmp_path,
                            stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)
    deadline = time.monotonic() + 15
    while not (tmp_path / "report.json").exists():
        assert proc.poll() is None, proc.communicate()
        assert time.monotonic() < deadline, "fake claude did not start"
        time.sleep(0.02)
    return proc


@pytest.mark.parametrize("signame,expected", [("SIGTERM", 128 + signal.SIGTERM), ("SIGHUP", 5),
                                              ("SIGINT", 6)])
def test_signals_are_forwarded_to_claude(tmp_path, fake_claude, upstream, signame, expected):
    # SIGTERM: the child dies of it (128+15). SIGHUP/SIGINT: its handler exits with FAKE_EXIT.
    # (No terminal here, so SIGINT cannot have reached the child directly: it must be forwarded.)
    proc = _start_waiting(tmp_path, fake_claude, upstream, str(expected))
    try:
        proc.send_signal(getattr(signal, signame))
        _, err = proc.communicate(timeout=15)
    finally:
        if proc.poll() is None:  # not forwarded: do not leave the launcher behind
            proc.kill()
            proc.wait()
    assert proc.returncode == expected, err
    if signame != "SIGTERM":
        assert read_report(tmp_path)["signal"] == getattr(signal, signame)


def test_zipapp_runs_claude(tmp_path, fake_claude, upstream):
    sys.path.insert(0, str(ROOT / "tools"))
    try:
        from build_zipapp import build
    finally:
        sys.path.remove(str(ROOT / "tools"))
    pyz = build(tmp_path / "clasp.pyz")
    env = launcher_env(tmp_path, upstream, str(fake_claude), FAKE_EXIT="3")
    del env["PYTHONPATH"]
    proc = run_launcher(["-p", "x"], env, tmp_path, cmd=[sys.executable, "-I", str(pyz), "claude"])
    assert proc.returncode == 3, proc.stderr
    report = read_report(tmp_path)
    assert report["argv"][2:] == ["-p", "x"]
    # the status line command runs this clasp from the zipapp too (no PYTHONPATH, no checkout)
    assert str(pyz) in json.loads(report["argv"][1])["statusLine"]["command"]
    code, out, err = report["statusline"]
    assert (code, err) == (0, "") and out.startswith("clasp · custom up-model · ") and out.endswith(" · ok\n")
    assert report["messages"][0] == 200
    assert report["messages"][1]["content"][0]["text"] == "Hi from upstream"


# ---------------------------------------------------------------- clasp flags before `claude`

def test_clasp_flags_before_claude_configure_the_private_proxy(tmp_path, fake_claude, upstream):
    # flags > env: CLASP_MODEL says env-model, the flag says flag-model
    env = launcher_env(tmp_path, None, str(fake_claude), FAKE_EXIT="0", CUSTOM_BASE_URL=upstream.url,
                       CLASP_MODEL="env-model")
    claude_part = ["-p", "hi", "-model", "x", "--", "-port"]  # Claude Code's, even when they look like clasp's
    proc = run_launcher(["-provider", "custom", "-model", "flag-model", "-no-statusline", "claude", *claude_part],
                        env, tmp_path, cmd=[sys.executable, "-m", "clasp"])
    assert proc.returncode == 0, proc.stderr
    report = read_report(tmp_path)
    assert report["argv"] == claude_part  # -no-statusline: no --settings added
    assert report["messages"][0] == 200
    assert upstream.requests[-1].json()["model"] == "flag-model"


@pytest.mark.parametrize("clasp_part", [["-model", "claude", "-no-statusline"],
                                        ["-model", "claude", "-no-statusline", "--"]])
def test_a_flag_value_named_claude_is_a_value_and_dash_dash_ends_clasp_flags(tmp_path, fake_claude, upstream,
                                                                             clasp_part):
    env = launcher_env(tmp_path, upstream, str(fake_claude), FAKE_EXIT="0")
    proc = run_launcher([*clasp_part, "claude", "-p", "claude"], env, tmp_path, cmd=[sys.executable, "-m", "clasp"])
    assert proc.returncode == 0, proc.stderr
    assert read_report(tmp_path)["argv"] == ["-p", "claude"]
    assert upstream.requests[-1].json()["model"] == "claude"


@pytest.mark.parametrize("clasp_part,message", [
    (["-no-such-flag"], "unknown flag -no-such-flag"),
    (["-port", "notaport"], "invalid int value 'notaport'"),
    (["stray"], "unexpected argument 'stray'"),
    (["--", "-p"], "-- ends clasp's flags and must be followed by claude"),
])
def test_bad_clasp_flags_before_claude_exit_2_before_claude_runs(tmp_path, fake_claude, upstream, clasp_part,
                                                                 message):
    env = launcher_env(tmp_path, upstream, str(fake_claude), FAKE_EXIT="0")
    proc = run_launcher([*clasp_part, "claude", "-p", "hi"], env, tmp_path, cmd=[sys.executable, "-m", "clasp"])
    assert proc.returncode == 2
    assert message in proc.stderr and "Traceback" not in proc.stderr
    assert not (tmp_path / "report.json").exists()


def test_help_and_version_before_claude(tmp_path, fake_claude, upstream):
    env = launcher_env(tmp_path, upstream, str(fake_claude), FAKE_EXIT="0")
    proc = run_launcher(["-help", "claude", "-p", "hi"], env, tmp_path, cmd=[sys.executable, "-m", "clasp"])
    assert proc.returncode == 0
    assert "python -m clasp [flags] claude [args...]" in proc.stdout and "-no-name" in proc.stdout
    assert not (tmp_path / "report.json").exists()
    proc = run_launcher(["-version", "claude"], env, tmp_path, cmd=[sys.executable, "-m", "clasp"])
    assert proc.returncode == 0 and proc.stdout.startswith("clasp ")
    assert not (tmp_path / "report.json").exists()


# ---------------------------------------------------------------- Claude Code status line

def test_status_line_shows_the_session_from_the_private_proxy(tmp_path, fake_claude, upstream):
    env = launcher_env(tmp_path, upstream, str(fake_claude), FAKE_EXIT="0")
    proc = run_launcher(["-p", "hi"], env, tmp_path)
    assert proc.returncode == 0, proc.stderr
    report = read_report(tmp_path)
    assert report["argv"][0] == "--settings" and report["argv"][2:] == ["-p", "hi"]
    settings = json.loads(report["argv"][1])
    assert settings["statusLine"]["type"] == "command"
    key = report["env"]["ANTHROPIC_API_KEY"]
    assert report["env"]["CLASP_STATUSLINE_KEY"] == key  # the key comes through the environment...
    assert key not in report["argv"][1]                   # ...never on the command line
    code, out, err = report["statusline"]
    assert (code, err) == (0, "")
    # one line: upstream provider and model, tokens so far (no prices known: no cost), state
    assert out.count("\n") == 1 and key not in out
    assert out.startswith("clasp · custom up-model · ") and " in / " in out and out.endswith(" out · ok\n")


def test_statusline_off_by_env_and_config_conventions(tmp_path, fake_claude, upstream):
    env = launcher_env(tmp_path, upstream, str(fake_claude), FAKE_EXIT="0", CLASP_STATUSLINE="false",
                       CLASP_STATUSLINE_KEY="stale-from-outside")
    proc = run_launcher(["-p", "hi"], env, tmp_path)
    assert proc.returncode == 0, proc.stderr
    report = read_report(tmp_path)
    assert report["argv"] == ["-p", "hi"] and report["env"]["CLASP_STATUSLINE_KEY"] is None


@pytest.mark.parametrize("own", [["--settings", '{"theme": "dark"}'], ['--settings={"theme": "dark"}']])
def test_users_own_settings_are_not_clobbered(tmp_path, fake_claude, upstream, own):
    env = launcher_env(tmp_path, upstream, str(fake_claude), FAKE_EXIT="0")
    proc = run_launcher([*own, "-p", "hi"], env, tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert read_report(tmp_path)["argv"] == [*own, "-p", "hi"]
