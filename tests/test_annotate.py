"""The pair annotation page in a real browser (Debian's Chromium driven by Playwright) against
a real `aas-ray annotate` server process over a real paused run."""

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
from pathlib import Path

import pandas as pd
import pytest

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
pytestmark = [pytest.mark.slow,
              pytest.mark.skipif(CHROMIUM is None, reason="Chromium is not installed (apt-get install chromium)")]
ARGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
        "--disable-component-update", "--disable-sync"]
TINY = ["data.synthetic.identities=10", "data.synthetic.families=4", "data.synthetic.max_images=8",
        "data.synthetic.image_size=64", "model.image_size=[64,64]", "cluster.k1=10", "cluster.k2=3",
        "al.budget_fraction=null", "al.budget_per=cycle", "al.cycles=2", "al.every=1", "train.epochs=2",
        "train.iters=2", "train.batch_size=16", "train.eval_every=1", "al.oracle=human", "al.strategy=random"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run_args(tmp: Path, *extra, pairs=12):
    out = ["run", "--tracking-uri", f"sqlite:///{tmp / 'mlflow.db'}"]
    for s in TINY + [f"al.budget_pairs={pairs}", f"data.cache_dir={tmp / 'cache'}", f"output_dir={tmp / 'runs'}"]:
        out += ["--set", s]
    return out + list(extra)


@pytest.fixture(scope="module")
def paused_run(tmp_path_factory):
    """A real run paused at cycle 1 for a person (made once, copied for each test)."""
    from aas_ray.cli import main

    tmp = tmp_path_factory.mktemp("paused")
    assert main(run_args(tmp)) == 0
    (run_dir,) = list((tmp / "runs").glob("*/pending-cycle-1.csv"))
    return run_dir.parent


@pytest.fixture
def run_dir(paused_run, tmp_path):
    dst = tmp_path / "runs" / paused_run.name
    shutil.copytree(paused_run, dst)
    return dst


class Server:
    def __init__(self, run_dir: Path):
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}/"
        self.proc = subprocess.Popen([sys.executable, "-m", "aas_ray.cli", "annotate", str(run_dir), "--port",
                                      str(self.port)], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        deadline = time.time() + 60
        while time.time() < deadline:
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.5):
                    return
            except OSError:
                if self.proc.poll() is not None:
                    raise RuntimeError(self.proc.stdout.read())
                time.sleep(0.2)
        raise TimeoutError("annotation server did not start")

    def kill(self):
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait()


@pytest.fixture
def browser():
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, args=ARGS)
        yield b
        b.close()


def journal(run_dir):
    path = run_dir / "annotations.jsonl"
    return [json.loads(x) for x in path.read_text().splitlines()] if path.exists() else []


def truth_of(run_dir):
    split = pd.read_csv(run_dir / "split.csv")
    return split[split["role"] == "train"]["identity"].to_numpy()


def open_page(browser, url):
    page = browser.new_page(viewport={"width": 1300, "height": 850})
    page.goto(url)
    page.wait_for_selector("#pair-index:not(:has-text('–'))")
    return page


def answer_current(page, ids, key_for=None):
    """Answer the pair on screen by keyboard (the truth decides), then wait for the next one."""
    u, v = int(page.inner_text("#u")), int(page.inner_text("#v"))
    before = page.inner_text("#progress")
    page.keyboard.press(key_for(u, v) if key_for else ("s" if ids[u] == ids[v] else "d"))
    page.wait_for_function("(before) => document.getElementById('progress').textContent !== before", arg=before)
    return u, v


def test_a_cycle_answered_by_keyboard_is_in_the_journal(run_dir, browser):
    server = Server(run_dir)
    try:
        page = open_page(browser, server.url)
        ids = truth_of(run_dir)
        state = json.loads((run_dir / "state.json").read_text())
        asked = {tuple(p) for p in state["pending"]["pairs"]}
        seen = [answer_current(page, ids) for _ in range(len(asked))]
        page.wait_for_selector("#done:not([hidden])")
        assert f"aas-ray run --resume {run_dir.resolve()}" in page.inner_text("#done")
        lines = journal(run_dir)
        assert {(r["u"], r["v"]) for r in lines} == asked == set(seen)
        assert all(r["answer"] == ("MUST_LINK" if ids[r["u"]] == ids[r["v"]] else "CANNOT_LINK") for r in lines)
        # undo withdraws the last answer by appending, never by editing the history
        page.keyboard.press("z")
        page.wait_for_function("(n) => document.getElementById('progress').textContent.startsWith(n)",
                               arg=str(len(asked) - 1))
        assert journal(run_dir)[:-1] == lines and journal(run_dir)[-1]["kind"] == "retraction"
    finally:
        server.kill()


def test_killed_server_loses_nothing_and_the_page_continues(run_dir, browser):
    ids = truth_of(run_dir)
    server = Server(run_dir)
    page = open_page(browser, server.url)
    first = [answer_current(page, ids) for _ in range(4)]
    server.kill()  # SIGKILL mid-cycle
    assert [(r["u"], r["v"]) for r in journal(run_dir)] == first
    server = Server(run_dir)
    try:
        page = open_page(browser, server.url)
        assert page.inner_text("#progress").startswith("4 /")
        rest = []
        while not page.is_visible("#done"):
            rest.append(answer_current(page, ids))
        assert not set(rest) & set(first)
        assert len(journal(run_dir)) == len(first) + len(rest) == len(json.loads(
            (run_dir / "state.json").read_text())["pending"]["pairs"])
    finally:
        server.kill()


def test_two_pages_never_answer_one_pair_twice(run_dir, browser):
    ids = truth_of(run_dir)
    server = Server(run_dir)
    try:
        a = open_page(browser, server.url)
        b = open_page(browser, server.url)  # a second tab: its own client id, its own leases
        assert (a.inner_text("#u"), a.inner_text("#v")) != (b.inner_text("#u"), b.inner_text("#v"))
        total = len(json.loads((run_dir / "state.json").read_text())["pending"]["pairs"])
        while len(journal(run_dir)) < total:
            for page in (a, b):
                if page.is_visible("#done") or len(journal(run_dir)) >= total:
                    continue
                u, v = int(page.inner_text("#u")), int(page.inner_text("#v"))
                page.keyboard.press("s" if ids[u] == ids[v] else "d")
                page.wait_for_timeout(150)
        keys = [(r["u"], r["v"]) for r in journal(run_dir)]
        assert len(keys) == len(set(keys)) == total
        assert len({r["source"] for r in journal(run_dir)}) == 2  # both pages answered
    finally:
        server.kill()


def test_a_contradiction_is_shown_with_the_answers_it_conflicts_with(run_dir, browser):
    # Three pairs that close a triangle: 0-1 same, 1-2 same, then 0-2 different contradicts both.
    state = json.loads((run_dir / "state.json").read_text())
    state["pending"].update(pairs=[[0, 1], [1, 2], [0, 2]], pool=["us"] * 3, pair_type=[""] * 3, probability=[1.0] * 3)
    (run_dir / "state.json").write_text(json.dumps(state))
    server = Server(run_dir)
    try:
        page = open_page(browser, server.url)
        script = {(0, 1): "s", (1, 2): "s", (0, 2): "d"}
        for _ in range(2):
            answer_current(page, None, key_for=lambda u, v: script[(u, v)])
        assert (int(page.inner_text("#u")), int(page.inner_text("#v"))) == (0, 2)
        page.keyboard.press("d")
        page.wait_for_selector("#conflict:not([hidden])")
        text = page.inner_text("#conflict")
        assert "images 0 and 1: same" in text and "images 1 and 2: same" in text
        page.click("#change-same")  # change of mind: appended as a correction
        page.wait_for_selector("#done:not([hidden])")
        lines = journal(run_dir)
        assert [r.get("kind", "answer") for r in lines] == ["answer", "answer", "answer", "correction"]
        assert lines[2]["answer"] == "CANNOT_LINK" and lines[3]["answer"] == "MUST_LINK"
    finally:
        server.kill()


def test_only_catalogue_images_are_served(run_dir):
    from urllib.error import HTTPError
    from urllib.request import urlopen

    images = pd.read_csv(run_dir / "images.csv", keep_default_na=False)
    images.loc[1, "path"] = "../" * 12 + "etc/passwd"  # a run folder pointing outside the catalogue
    images.to_csv(run_dir / "images.csv", index=False)
    server = Server(run_dir)
    try:
        def status(path):
            try:
                with urlopen(server.url + path) as r:
                    return r.status
            except HTTPError as err:
                return err.code

        assert status("api/image/0") == 200
        assert status("api/image/1") == 403
        assert status("api/image/..%2F..%2F..%2Fetc%2Fpasswd") in (404, 422)
        assert status("api/image/999999") == 404
        assert status("static/..%2F..%2Fserver.py") == 404
        assert status("static/app.js") == 200
    finally:
        server.kill()


def test_the_page_needs_the_token_off_loopback(run_dir):
    from fastapi.testclient import TestClient

    from aas_ray.experiment.run_folder import RunFolder
    from aas_ray.orchestration.annotate.session import AnnotationSession
    from aas_ray.orchestration.annotate.server import create_app

    app = create_app(AnnotationSession(RunFolder(run_dir)), token="sekrit", host="10.1.2.3", port=8700)
    client = TestClient(app, base_url="http://10.1.2.3:8700")
    assert client.get("/api/status").status_code == 401
    assert client.get("/api/status?token=wrong").status_code == 401
    ok = client.get("/api/status?token=sekrit")
    assert ok.status_code == 200 and ok.json()["waiting"]
    assert client.get("/api/status").status_code == 200  # the cookie set by the first page load


def test_the_run_continues_by_itself_after_the_last_answer(tmp_path, browser):
    port = free_port()
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    proc = subprocess.Popen([sys.executable, "-m", "aas_ray.cli", *run_args(tmp_path, "--serve", "--port", str(port),
                                                                              pairs=6)],
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        deadline = time.time() + 300
        while time.time() < deadline and not list((tmp_path / "runs").glob("*/pending-cycle-1.csv")):
            assert proc.poll() is None, proc.stdout.read()
            time.sleep(0.3)
        run_dir = next((tmp_path / "runs").glob("*/pending-cycle-1.csv")).parent
        ids = truth_of(run_dir)
        page = None
        while time.time() < deadline and page is None:
            try:
                page = open_page(browser, f"http://127.0.0.1:{port}/")
            except Exception:  # the page server is still starting
                time.sleep(0.5)
        for cycle in (1, 2):
            page.wait_for_function("(c) => document.getElementById('cycle').textContent === c && "
                                   "!document.getElementById('annotate').hidden", arg=str(cycle), timeout=120_000)
            while not page.is_visible("#done"):
                answer_current(page, ids)
            assert page.is_visible("#done-serve")
        assert proc.wait(300) == 0
        state = json.loads((run_dir / "state.json").read_text())
        assert state["finished"] and [c["cycle"] for c in state["cycles"]] == [1, 2]
        assert len(journal(run_dir)) == 12
    finally:
        if proc.poll() is None:
            proc.kill()


PAYLOAD = '<img src=x onerror="window.__pwned=1">'


def request(port, method, path, headers=None, body=None):
    """A raw HTTP request (every header as given, Host included); status and body."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        conn.putrequest(method, path, skip_host=True, skip_accept_encoding=True)
        data = json.dumps(body).encode() if body is not None else b""
        for k, v in {"Host": f"127.0.0.1:{port}", **(headers or {}), "Content-Type": "application/json",
                     "Content-Length": str(len(data))}.items():
            if v is not None:
                conn.putheader(k, v)
        conn.endheaders(data)
        r = conn.getresponse()
        return r.status, r.read().decode(), dict(r.getheaders())
    finally:
        conn.close()


def test_markup_stored_in_a_run_is_shown_as_text_and_runs_nothing(run_dir, browser):
    """Every value the pages show that someone could have stored (the answer's source, the
    pool, the run folder's name) holds markup with an onerror handler: the pages show it
    literally, no script runs and no inline script is even attempted."""
    hostile = run_dir.with_name(PAYLOAD)
    run_dir.rename(hostile)
    state = json.loads((hostile / "state.json").read_text())
    state["pending"]["pool"][0] = PAYLOAD
    (hostile / "state.json").write_text(json.dumps(state))
    u, v = state["pending"]["pairs"][0]
    (hostile / "annotations.jsonl").write_text(json.dumps(
        {"u": u, "v": v, "answer": "MUST_LINK", "cycle": 1, "source": "human:web:" + PAYLOAD}) + "\n")
    server = Server(hostile)
    try:
        context = browser.new_context()
        context.add_init_script("window.__violations = [];"
                                "document.addEventListener('securitypolicyviolation', (e) => "
                                "window.__violations.push(e.violatedDirective));")
        page = context.new_page()
        page.goto(server.url)
        page.wait_for_selector("#pair-index:not(:has-text('–'))")
        assert page.inner_text("#run") == PAYLOAD
        # The API refuses a client name that is not a plain identifier, with one line naming the field.
        refused = page.evaluate("""(p) => fetch('api/answer', {method: 'POST', headers: {'Content-Type':
            'application/json'}, body: JSON.stringify({i: 1, answer: 'different', client: p})})
            .then(async (r) => [r.status, await r.json()])""", PAYLOAD)
        assert refused == [422, {"error": "client: must be 1 to 32 letters, digits, '-' or '_'"}]
        assert len(journal(hostile)) == 1
        review = context.new_page()
        review.goto(server.url + "review")
        review.wait_for_selector("#rows tr")
        cells = review.locator("#rows tr").first.locator("td")
        assert cells.nth(4).inner_text() == PAYLOAD and cells.nth(5).inner_text() == "human:web:" + PAYLOAD
        assert review.inner_text("#run") == PAYLOAD
        for p in (page, review):
            assert p.evaluate("window.__pwned") is None
            assert p.evaluate("window.__violations") == []
            assert p.locator("img[src='x']").count() == 0
        # A strict policy on every response: scripts from the server's files only, none inline.
        for path in ("", "review", "static/app.js", "api/status", "api/nope"):
            csp = request(server.port, "GET", "/" + path)[2]["content-security-policy"]
            assert "script-src 'self'" in csp and "unsafe-inline" not in csp
        static = Path(__file__).resolve().parents[1] / "aas_ray/orchestration/annotate/static"
        for html in static.glob("*.html"):
            assert not re.search(r"<script(?![^>]*\bsrc=)", html.read_text()), html
        for js in static.glob("*.js"):
            assert not re.search(r"innerHTML|outerHTML|insertAdjacentHTML|document\.write", js.read_text()), js
        context.close()
    finally:
        server.kill()


def test_only_its_own_host_and_origin_are_answered(run_dir, browser):
    """DNS rebinding (a foreign name in Host) gets 400 before any route; a change posted from
    another origin gets 403 and records nothing; the page's own requests go through."""
    server = Server(run_dir)
    port = server.port
    try:
        own = f"http://127.0.0.1:{port}"
        answer = {"i": 0, "answer": "different", "client": "tab1"}
        for host in ("evil.example", f"evil.example:{port}", f"127.0.0.1:{port + 1}", "localhost.evil.example"):
            assert request(port, "GET", "/api/status", {"Host": host})[0] == 400, host
            assert request(port, "POST", "/api/next", {"Host": host, "Origin": own}, {"client": "tab1"})[0] == 400
        for host in (f"127.0.0.1:{port}", f"localhost:{port}", f"[::1]:{port}"):
            assert request(port, "GET", "/api/status", {"Host": host})[0] == 200, host
        for headers in ({"Origin": "http://evil.example"}, {"Origin": "null"}, {"Sec-Fetch-Site": "cross-site"},
                        {"Origin": own, "Sec-Fetch-Site": "same-site"}, {}):
            status, body, _ = request(port, "POST", "/api/answer", headers, answer)
            assert status == 403 and "must come from this page" in body, headers
        assert journal(run_dir) == []
        assert request(port, "POST", "/api/next", {"Origin": own}, {"client": "tab1"})[0] == 200
        assert request(port, "POST", "/api/answer", {"Sec-Fetch-Site": "same-origin"}, answer)[0] == 200
        assert len(journal(run_dir)) == 1
        # the page itself, in the browser, answers as before
        page = open_page(browser, server.url)
        answer_current(page, truth_of(run_dir))
        assert len(journal(run_dir)) == 2
    finally:
        server.kill()


def test_host_names_follow_the_address_given(run_dir):
    from fastapi.testclient import TestClient

    from aas_ray.experiment.run_folder import RunFolder
    from aas_ray.orchestration.annotate.session import AnnotationSession
    from aas_ray.orchestration.annotate.server import create_app

    session = AnnotationSession(RunFolder(run_dir))

    def status(host, bind, **kw):
        client = TestClient(create_app(session, token="t", host=bind, port=8700), base_url=f"http://{host}")
        return client.get("/api/status?token=t", **kw).status_code

    assert status("lynx.lab:8700", "lynx.lab") == 200
    assert status("127.0.0.1:8700", "lynx.lab") == 200
    assert status("10.0.0.7:8700", "lynx.lab") == 400
    # bound to every address: any IP address and this machine's name, never a foreign DNS name
    import socket

    assert status("10.0.0.7:8700", "0.0.0.0") == 200
    assert status(f"{socket.gethostname()}:8700", "0.0.0.0") == 200
    assert status("evil.example:8700", "0.0.0.0") == 400
