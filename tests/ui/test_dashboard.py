"""The dashboard in a real browser: a 3-node cluster of real `ollamamax serve` processes on loopback, the model
created on the first node and replicated; headless Chromium (Debian's package, driven by its chromedriver) opens
`/ui` on the third node and must show three healthy members and the model's two copies, stream a chat answer
typed into the page, and show a `kill -9`'d node as unhealthy within the failure detector's dead timeout (5 s;
suspect after 1.5 s). Saves a screenshot.

Run by scripts/ui-test.sh, which installs what it needs:
    OLLAMAMAX_BIN=target/release/ollamamax OLLAMAMAX_MODEL=model.gguf SCREENSHOT=out.png python test_dashboard.py
"""

import json
import os
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

        # A chat typed into the page streams its answer (watched while it grows).
        wait_for("the model in the chat box",
                 lambda: ["smollm2:latest"] in rows("#model option", "value"))
        driver.find_element(By.ID, "prompt").send_keys("Write three sentences about lighthouses.")
        driver.find_element(By.ID, "send").click()
        lengths = set()

        def answered():
            answer = driver.find_element(By.ID, "answer")
            lengths.add(len(answer.text))
            return answer.get_attribute("data-state") in ("done", "error") and answer

        answer = wait_for("the chat answer", answered)
        assert answer.get_attribute("data-state") == "done", answer.text
        assert "tokens/s" in answer.text, answer.text
        assert len(lengths) > 2, f"the answer grew in steps (streamed), seen lengths {sorted(lengths)}"
        print(f"ui: chat answered: {answer.text[:80]!r}...")

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
