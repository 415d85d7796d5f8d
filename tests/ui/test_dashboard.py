"""The dashboard in a real browser: a 3-node cluster of real `ollamamax serve` processes on loopback, the model
created on the first node and replicated; headless Chromium (Debian's package, driven by its chromedriver) opens
`/ui` on the third node and must show three healthy members and the model's two copies, stream a chat answer
typed into the page while the live requests table shows that request (generating, with a tokens/s value, on the
node that serves it, found independently in the nodes' logs) and drops it once the answer ends, and show a
`kill -9`'d node as unhealthy within the failure detector's dead timeout (5 s; suspect after 1.5 s) with its load
and requests unknown instead of its last numbers. Saves screenshots (during the chat, and at the end).

Run by scripts/ui-test.sh, which installs what it needs:
    OLLAMAMAX_BIN=target/release/ollamamax OLLAMAMAX_MODEL=model.gguf SCREENSHOT=out.png python test_dashboard.py
"""

import json
import os
import re
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request

from selenium import webdriver
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By

BIN = os.environ["OLLAMAMAX_BIN"]
MODEL_FILE = os.environ["OLLAMAMAX_MODEL"]
SCREENSHOT = os.environ.get("SCREENSHOT", "ui-dashboard.png")
SETTLE = 60.0
# The detector rates a silent node Dead after 5 s; the page refreshes every second.
UNHEALTHY_WITHIN = 5.0 + 2.0


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Node:
    def __init__(self, root, name):
        self.name = name
        self.root = os.path.join(root, name)
        os.makedirs(os.path.join(self.root, "models"))
        self.api = free_port()
        self.quic = free_port()
        self.process = None

    def env(self):
        env = {k: v for k, v in os.environ.items() if not k.startswith("OLLAMA")}
        env.update(OLLAMA_HOST=f"127.0.0.1:{self.api}", OLLAMA_MODELS=os.path.join(self.root, "models"),
                   HOME=self.root, OLLAMAMAX_THREADS="1")
        return env

    def run(self, *args):
        return subprocess.run([BIN, *args], env=self.env(), capture_output=True, text=True, check=True).stdout

    def start(self, join=None):
        args = [BIN, "serve", "--data-dir", os.path.join(self.root, "data"),
                "--cluster-listen", f"127.0.0.1:{self.quic}"]
        if join:
            args += ["--join", f"127.0.0.1:{join[0].quic}", "--token", join[1]]
        log = open(os.path.join(self.root, "server.log"), "ab")
        self.process = subprocess.Popen(args, env=self.env(), stdout=log, stderr=log)

    def kill(self):
        if self.process:
            self.process.send_signal(signal.SIGKILL)
            self.process.wait()
            self.process = None

    def log_text(self):
        path = os.path.join(self.root, "server.log")
        if not os.path.exists(path):
            return ""
        return re.sub(r"\x1b\[[0-9;]*m", "", open(path, errors="replace").read())

    def url(self, path):
        return f"http://127.0.0.1:{self.api}{path}"

    def status(self):
        try:
            with urllib.request.urlopen(self.url("/api/cluster"), timeout=5) as response:
                return json.load(response)
        except Exception:
            return None


def wait_for(what, check):
    started = time.time()
    while time.time() - started < SETTLE:
        value = check()
        if value:
            return value
        time.sleep(0.2)
    raise AssertionError(f"timed out waiting for {what}")


def main():
    root = tempfile.mkdtemp(prefix="ollamamax-ui-")
    nodes = [Node(root, name) for name in "abc"]
    driver = None
    try:
        token = next(word for word in nodes[0].run("cluster", "init", "--data-dir", os.path.join(nodes[0].root, "data")).split()
                     if word.startswith("OMX1."))
        nodes[0].start()
        wait_for("the first node to lead", lambda: (nodes[0].status() or {}).get("leader"))
        nodes[1].start((nodes[0], token))
        nodes[2].start((nodes[0], token))

        def three_voters():
            statuses = [node.status() for node in nodes]
            return all(s and sum(m["role"] == "voter" for m in s["members"]) == 3 for s in statuses)

        wait_for("three voters", three_voters)
        modelfile = os.path.join(root, "Modelfile")
        with open(modelfile, "w") as f:
            f.write(f"FROM {MODEL_FILE}\n")
        subprocess.run([BIN, "create", "smollm2", "-f", modelfile], env=nodes[0].env(), check=True,
                       capture_output=True)

        def two_copies():
            status = nodes[2].status() or {}
            return any(m["name"] == "smollm2:latest" and m["replicas"] >= 2 for m in status.get("models", []))

        wait_for("two copies", two_copies)

        options = webdriver.ChromeOptions()
        options.binary_location = "/usr/bin/chromium"
        for flag in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--window-size=1400,1000"):
            options.add_argument(flag)
        driver = webdriver.Chrome(service=Service("/usr/bin/chromedriver"), options=options)
        driver.get(nodes[2].url("/ui"))

        # The page redraws every second: read rows in one script call, not element by element.
        def rows(selector, *attributes):
            return driver.execute_script(
                "return [...document.querySelectorAll(arguments[0])].map(row =>"
                " arguments[1].map(name => row.getAttribute(name)))", selector, list(attributes))

        def members():
            return dict(rows("#members tr[data-member-id]", "data-member-id", "data-health"))

        ids = [str(node.status()["node"]) for node in nodes]
        wait_for("three healthy members on the page",
                 lambda: sorted(members()) == sorted(ids) and all(h == "alive" for h in members().values()))
        wait_for("the model's two copies on the page", lambda: any(
            name == "smollm2:latest" and int(replicas) >= 2
            for name, replicas in rows("#models tr[data-model]", "data-model", "data-replicas")))
        print("ui: three members and the model's copies shown")

        # Node b's load is shown as current while it is alive.
        def member_cells(member_id):
            return driver.execute_script(
                "const row = document.querySelector(`#members tr[data-member-id='${arguments[0]}']`);"
                " return row && [row.dataset.load, row.cells[3].textContent, row.cells[4].textContent]",
                member_id)

        wait_for("node b's load shown as current", lambda: (member_cells(ids[1]) or [None])[0] == "current")
        _, b_load, _ = member_cells(ids[1])
        assert re.fullmatch(r"\d+/\d+", b_load), b_load

        # A chat typed into the page streams its answer (watched while it grows); long enough (num_predict) that
        # the live requests table shows it while it runs.
        wait_for("the model in the chat box",
                 lambda: ["smollm2:latest"] in rows("#model option", "value"))
        driver.find_element(By.ID, "prompt").send_keys("Write a long story about a lighthouse keeper.")
        driver.find_element(By.ID, "num_predict").send_keys("600")
        driver.find_element(By.ID, "send").click()
        lengths = set()
        seen = []

        def answer_state():
            return driver.execute_script(
                "const a = document.getElementById('answer');"
                " return [a.dataset.state, a.dataset.requestId || '', a.textContent.length]")

        def generating_row():
            state, request_id, length = answer_state()
            lengths.add(length)
            if not request_id:
                return None
            for row in rows("#requests tr[data-request-id]", "data-request-id", "data-node", "data-state",
                            "data-tokens-per-s"):
                if row[0] == request_id:
                    seen.append(row)
                    if row[2] == "generating" and row[3]:
                        return row
            assert state == "streaming", f"the answer ended ({state}) before the page showed it generating: {seen}"
            return None

        request_id, shown_node, _, rate = wait_for("the chat's request generating in the live requests",
                                                   generating_row)
        driver.save_screenshot(SCREENSHOT.replace(".png", "-requests.png"))
        assert float(rate) > 0, rate
        print(f"ui: request {request_id} shown generating on node {shown_node} at {float(rate):.1f} tokens/s")

        def answered():
            state, _, length = answer_state()
            lengths.add(length)
            return state in ("done", "error")

        wait_for("the chat answer", answered)
        answer = driver.find_element(By.ID, "answer")
        assert answer.get_attribute("data-state") == "done", answer.text
        assert "tokens/s" in answer.text, answer.text
        assert len(lengths) > 2, f"the answer grew in steps (streamed), seen lengths {sorted(lengths)}"
        print(f"ui: chat answered: {answer.text[:80]!r}...")
        wait_for("the finished request gone from the live requests",
                 lambda: request_id not in [row[0] for row in rows("#requests tr[data-request-id]",
                                                                   "data-request-id")])
        # The serving node, from the logs: the accepting node (c) logs every request; a forwarded one is logged by
        # the node that served it too.
        others = [index for index in (0, 1) if f"id={request_id}" in nodes[index].log_text()]
        assert f"id={request_id}" in nodes[2].log_text(), "the accepting node logged the request"
        assert len(others) <= 1, others
        serving = ids[others[0]] if others else ids[2]
        assert shown_node == serving, f"shown on node {shown_node}, served by node {serving}"
        print(f"ui: the request was gone from the page once answered; served by node {serving}")

        # Kill node b: the page shows it unhealthy within the detector's dead timeout.
        killed_at = time.time()
        nodes[1].kill()
        wait_for("the killed node shown unhealthy",
                 lambda: members().get(ids[1]) in ("suspect", "dead") or None)
        suspect_after = time.time() - killed_at
        wait_for("the killed node shown dead", lambda: members().get(ids[1]) == "dead" or None)
        dead_after = time.time() - killed_at
        driver.save_screenshot(SCREENSHOT)
        print(f"ui: killed node shown suspect after {suspect_after:.1f}s, dead after {dead_after:.1f}s; "
              f"screenshot {SCREENSHOT}")
        assert dead_after <= UNHEALTHY_WITHIN + 1.0, f"dead only after {dead_after:.1f}s"
        # Its load, loaded models and requests are unknown now, not its last report.
        wait_for("the dead node's load shown as stale", lambda: (member_cells(ids[1]) or [None])[0] == "stale")
        shown, load, loaded = member_cells(ids[1])
        assert load == "—", f"the dead node's load is shown as {load!r} (was {b_load!r})"
        assert "last report" in loaded and "smollm2" not in loaded, loaded
        assert rows(f"#requests tr[data-stale-node='{ids[1]}']", "data-stale-node"), "requests unknown row"
        dead_member = next(m for m in nodes[2].status()["members"] if str(m["id"]) == ids[1])
        assert dead_member["running"] is None and dead_member["requests"] is None, dead_member
        assert dead_member["report_age_ms"] >= 1500, dead_member
        print(f"ui: the dead node's load shown as {load!r} {loaded!r}, not {b_load!r}")
        driver.save_screenshot(SCREENSHOT)
        events = driver.find_element(By.ID, "events").text
        assert f"node {ids[1]}" in events, events
        print("ui: PASS")
    except BaseException:
        if driver:
            driver.save_screenshot(SCREENSHOT)
        for node in nodes:
            log = os.path.join(node.root, "server.log")
            if os.path.exists(log):
                print(f"--- {node.name} ---\n" + open(log, errors="replace").read()[-3000:], file=sys.stderr)
        raise
    finally:
        if driver:
            driver.quit()
        for node in nodes:
            node.kill()


if __name__ == "__main__":
    main()
