"""GET /dashboard in a real headless browser (Debian's chromium), against `python -m clasp` under
traffic from a fake upstream: the charts render with non-zero data, the page reaches nothing but
the proxy, and a screenshot is a real picture.

What the page drew is read back from the DOM chromium dumps: each chart's <svg> carries
data-points / data-max / data-paths, the tables data-rows, the body data-snapshots.
"""

from __future__ import annotations

import json
import re
import shutil
import struct
import subprocess
import threading
import time
import urllib.error
import urllib.request
import zlib
from pathlib import Path

import pytest

from harness import FakeUpstream, LoopThread, Reply, completion, json_reply, spawn_clasp, sse_reply, text_chunks

PROXY_KEY = "dash-proxy-key-Hs83kQ"
HELLO = {"model": "claude-sonnet-4-5", "max_tokens": 50, "messages": [{"role": "user", "content": "Hi"}]}
TRAFFIC_REQUESTS = 1500     # per sender, an upper bound: they stop once the tests are done
TRAFFIC_SECONDS = 60
MARKUP = "<img src=x onerror=alert(1)>"


def chromium() -> str:
    path = shutil.which("chromium") or shutil.which("chromium-browser")
    assert path, "chromium is not installed (.ci/run installs Debian's chromium package)"
    return path


def browser_args(tmp: Path, port: int) -> list[str]:
    return [chromium(), "--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
            # nothing but the proxy resolves, and chromium's own background traffic stays off
            "--host-resolver-rules=MAP * ~NOTFOUND, EXCLUDE 127.0.0.1",
            "--disable-background-networking", "--disable-component-update", "--disable-sync",
            "--disable-default-apps", "--no-first-run", "--no-default-browser-check",
            "--disable-features=Translate,OptimizationHints,MediaRouter",
            f"--user-data-dir={tmp / 'profile'}", f"--log-net-log={tmp / 'netlog.json'}",
            "--net-log-capture-mode=Default"]


def _run_gateway(auth: bool):
    """clasp as a process (`python -m clasp`) against a fake upstream, and a bounded traffic thread:
    whole responses and streams over two models, upstream 400s (their message holds markup, which
    the page must show as text) and streams cut short (error events)."""
    lt = LoopThread()

    def script(seen):
        body = seen.json()
        text = body["messages"][-1]["content"]
        usage = {"prompt_tokens": 120, "completion_tokens": 7, "total_tokens": 127}
        if text == "bad":
            return json_reply({"error": {"message": "no tools here " + MARKUP, "type": "invalid_request_error"}}, 400)
        if text == "cut":
            return sse_reply(text_chunks(["par", "tial"]), drop_after=2, done=False, delay=0.02)
        if body.get("stream"):
            return sse_reply(text_chunks(["Hel", "lo", "!"], usage=usage), delay=0.02)
        return json_reply(completion(usage=usage))

    up = FakeUpstream(lt, script)
    args = ["-provider", "custom", "-model", "gpt-test", "-log-format", "json", "-circuit-breaker"]
    if auth:
        args += ["-auth", "-auth-api-key", PROXY_KEY]
    proc, port = spawn_clasp(args, {"CUSTOM_BASE_URL": up.url, "CUSTOM_API_KEY": "up-key-Bn27xQ"})
    gw = {"port": port, "lines": []}

    def read_log():  # the access log (JSON lines on stderr), read as the proxy writes it
        for line in iter(proc.stderr.readline, b""):
            gw["lines"].append(line.decode(errors="replace"))

    reader = threading.Thread(target=read_log, daemon=True)
    reader.start()
    stop = threading.Event()
    headers = {"content-type": "application/json", **({"x-api-key": PROXY_KEY} if auth else {})}

    def traffic(kinds: list[str]):
        started = time.monotonic()
        for i in range(TRAFFIC_REQUESTS):
            if stop.is_set() or time.monotonic() - started > TRAFFIC_SECONDS:
                return
            kind = kinds[i % len(kinds)]
            body = {**HELLO, "model": ["claude-sonnet-4-5", "claude-haiku-4-5"][i % 2],
                    "messages": [{"role": "user", "content": kind if kind in ("bad", "cut") else "Hi"}],
                    "stream": kind in ("stream", "cut")}
            req = urllib.request.Request(f"http://127.0.0.1:{port}/v1/messages", json.dumps(body).encode(), headers)
            try:
                urllib.request.urlopen(req, timeout=10).read()
            except urllib.error.HTTPError as e:
                e.read()
            except OSError:
                pass
            stop.wait(0.02)

    # chromium's virtual time runs the page's 2 s polls back to back in real time: the traffic is
    # dense enough (an upstream error every few tens of ms) for each poll to see something new
    senders = [threading.Thread(target=traffic, args=(kinds,), daemon=True)
               for kinds in (["ok", "stream", "stream", "cut", "stream"], ["bad", "ok"])]
    for t in senders:
        t.start()
    try:
        time.sleep(2)  # some history before the browser comes
        yield gw
    finally:
        stop.set()
        for t in senders:
            t.join(15)
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)
        reader.join(10)
        proc.stdout.close()
        proc.stderr.close()
        up.close()
        lt.stop()


@pytest.fixture(scope="module")
def gateway():
    yield from _run_gateway(auth=False)


@pytest.fixture(scope="module")
def auth_gateway():
    yield from _run_gateway(auth=True)


def access_lines(gw: dict) -> list[tuple[str, str]]:
    out = []
    for line in list(gw["lines"]):
        try:
            entry = json.loads(line)
        except ValueError:
            continue
        if isinstance(entry, dict) and "path" in entry:
            out.append((entry.get("method", ""), entry["path"]))
    return out


def page_requests(path: Path, origin: str) -> list[str]:
    """URLs of the requests the page made (chromium's net log): those it initiated (fetch, and any
    subresource) or that carry its site; chromium's own background requests (updates, sign-in,
    autofill: initiator "not an origin", no site of the page) are not the page's doing."""
    text = path.read_text(errors="replace")
    try:
        log = json.loads(text)
    except ValueError:  # a log cut short lacks its closing brackets
        log = json.loads(text.rstrip().rstrip(",") + "]}")
    start_job = log["constants"]["logEventTypes"]["URL_REQUEST_START_JOB"]
    site = "site=" + origin.rsplit(":", 1)[0] + ";"
    urls = []
    for event in log["events"]:
        params = event.get("params") or {}
        if event["type"] == start_job and (params.get("initiator") == origin
                                           or site in params.get("site_for_cookies", "")):
            urls.append(params["url"])
    return urls


def run_browser(tmp: Path, port: int, *mode: str) -> subprocess.CompletedProcess:
    url = f"http://127.0.0.1:{port}/dashboard"
    # virtual time: the page's 2 s timers run fast, its fetches still reach the real proxy
    return subprocess.run([*browser_args(tmp, port), "--virtual-time-budget=16000", *mode, url],
                          capture_output=True, timeout=180)


def svg_attrs(dom: str, chart_id: str) -> dict:
    m = re.search(r"<svg [^>]*id=\"%s\"[^>]*>" % chart_id, dom)
    assert m, f"chart {chart_id} missing from the DOM"
    return dict(re.findall(r'([\w-]+)="([^"]*)"', m.group(0)))


def test_dashboard_charts_render_live_data_and_reach_only_the_proxy(gateway, tmp_path):
    port = gateway["port"]
    done = run_browser(tmp_path, port, "--dump-dom")
    dom = done.stdout.decode(errors="replace")
    (tmp_path / "dom.html").write_text(dom)
    assert "<body" in dom, done.stderr.decode(errors="replace")[-2000:]
    snapshots = int(re.search(r'data-snapshots="(\d+)"', dom).group(1))
    assert snapshots >= 3, "the page polled /metrics several times"
    for chart in ("c-rps", "c-err", "c-lat", "c-ttft"):
        a = svg_attrs(dom, chart)
        assert int(a["data-points"]) >= 2 and float(a["data-max"]) > 0 and int(a["data-paths"]) >= 1, (chart, a)
    assert int(svg_attrs(dom, "c-act")["data-points"]) >= 2
    paths = re.findall(r'<path d="(M[^"]+)"', dom)
    assert paths and all(len(d) > 3 for d in paths)
    assert re.search(r'data-series="invalid_request_error"', dom)  # errors by type
    assert int(re.search(r'id="tokens" data-rows="(\d+)"', dom).group(1)) == 2   # two models
    assert "claude-haiku-4-5" in dom and "claude-sonnet-4-5" in dom
    assert int(re.search(r'id="errors" data-rows="(\d+)"', dom).group(1)) >= 1
    assert 'class="badge closed"' in dom   # the breaker of the custom target
    # upstream text is shown as text: the markup in an error message is escaped, never an element
    assert "no tools here &lt;img" in dom and "<img" not in dom
    # the page reached nothing but the proxy, and only /dashboard and /metrics there
    origin = f"http://127.0.0.1:{port}"
    urls = page_requests(tmp_path / "netlog.json", origin)
    assert f"{origin}/metrics" in urls
    assert all(u.startswith(origin + "/") for u in urls), urls
    browser_gets = {path for method, path in access_lines(gateway) if method != "POST"}
    assert browser_gets <= {"/health", "/dashboard", "/metrics"}, browser_gets
    assert {"/dashboard", "/metrics"} <= browser_gets


def png_pixels_vary(data: bytes) -> tuple[int, int, int]:
    """(width, height, distinct byte values in the decoded scanlines) of a PNG."""
    assert data[:8] == b"\x89PNG\r\n\x1a\n", "not a PNG"
    width, height = struct.unpack(">II", data[16:24])
    pos, idat = 8, b""
    while pos < len(data):
        length, kind = struct.unpack(">I4s", data[pos:pos + 8])
        if kind == b"IDAT":
            idat += data[pos + 8:pos + 8 + length]
        pos += 12 + length
    raw = zlib.decompress(idat)
    return width, height, len(set(raw[: 4 * 1024 * 1024]))


def test_dashboard_screenshot_is_a_picture(gateway, tmp_path):
    port = gateway["port"]
    shot = tmp_path / "dashboard.png"
    run_browser(tmp_path, port, f"--screenshot={shot}", "--window-size=1280,900")
    data = shot.read_bytes()
    width, height, distinct = png_pixels_vary(data)
    assert (width, height) == (1280, 900)
    assert len(data) > 30_000, "a page of charts and tables, not a blank one"
    assert distinct > 32, "not a single colour"


def test_dashboard_with_auth_asks_for_the_key_and_shows_no_data(auth_gateway, tmp_path):
    port = auth_gateway["port"]
    dom = run_browser(tmp_path, port, "--dump-dom").stdout.decode(errors="replace")
    (tmp_path / "dom.html").write_text(dom)
    assert re.search(r'<form id="keyform"[^>]* class="show"', dom) and "needs the proxy key" in dom
    assert "claude-sonnet-4-5" not in dom and not re.search(r"<body[^>]*data-snapshots", dom)
    statuses = [path for method, path in access_lines(auth_gateway) if method == "GET"]
    assert "/dashboard" in statuses and "/metrics" in statuses
