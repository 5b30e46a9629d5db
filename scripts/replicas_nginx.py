"""Two `sadi-cpp serve` replicas behind Debian's nginx (round robin), shown once for
docs/distributed.md: both replicas read the same mask folder, requests go to nginx only, and each
replica's access log shows what it answered.

    apt-get install nginx
    python scripts/replicas_nginx.py --masks DIR [--requests 6]

Prints the nginx configuration it used, each answer (steered and unsteered, through nginx), and
how many requests each replica's access log holds.
"""

from __future__ import annotations

import argparse
import json
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

CONF = """daemon off;
pid {work}/nginx.pid;
error_log {work}/error.log;
events {{ worker_connections 64; }}
http {{
    access_log {work}/access.log;
    upstream sadi {{ server 127.0.0.1:{a}; server 127.0.0.1:{b}; }}
    server {{
        listen 127.0.0.1:{front};
        location / {{
            proxy_pass http://sadi;
            proxy_http_version 1.1;
            proxy_set_header Host 127.0.0.1;
            proxy_set_header Authorization $http_authorization;
            proxy_buffering off;
            proxy_read_timeout 300s;
        }}
    }}
}}
"""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait(url: str, seconds: float = 180) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(url, timeout=2) as r:
                if r.status == 200:
                    return
        except OSError:
            time.sleep(0.3)
    raise SystemExit(f"{url} did not answer")


def post(url: str, body: dict) -> dict:
    req = urllib.request.Request(url, json.dumps(body).encode(), {"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=300) as r:
        return json.loads(r.read())


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--masks", type=Path, required=True)
    ap.add_argument("--requests", type=int, default=6)
    a = ap.parse_args()
    if shutil.which("nginx") is None:
        raise SystemExit("nginx is not installed: apt-get install nginx")
    work = Path(tempfile.mkdtemp(prefix="sadi-replicas-"))
    ports = {"a": free_port(), "b": free_port(), "front": free_port()}
    procs = []
    try:
        for name in ("a", "b"):
            log = open(work / f"replica-{name}.log", "w")
            procs.append(subprocess.Popen([sys.executable, "-m", "sadi_cpp", "serve", "--masks", str(a.masks), "--port",
                                           str(ports[name]), "--threads", "1", "--n-parallel", "2"], stdout=log,
                                          stderr=subprocess.STDOUT, cwd=work))
        for name in ("a", "b"):
            wait(f"http://127.0.0.1:{ports[name]}/health")
        conf = CONF.format(work=work, **ports)
        (work / "nginx.conf").write_text(conf)
        procs.append(subprocess.Popen(["nginx", "-c", str(work / "nginx.conf"), "-p", str(work)], cwd=work))
        front = f"http://127.0.0.1:{ports['front']}"
        wait(front + "/health")
        print("# nginx.conf\n" + conf.replace(str(work), "WORK"))
        masks = [m["id"] for m in json.loads(urllib.request.urlopen(front + "/v1/masks").read())["data"]]
        print(f"masks offered (through nginx): {masks}")
        for i in range(a.requests):
            body = {"prompt": "The movie was", "max_tokens": 12, "temperature": 0}
            if (i // 2) % 2 == 0 and masks:  # two of each in turn: round robin sends each kind to both replicas
                body["sadi"] = {"mask": masks[0], "delta": 9}
            answer = post(front + "/v1/completions", body)
            print(f"request {i + 1} ({'steered' if 'sadi' in body else 'unsteered'}): {answer['choices'][0]['text']!r}")
        time.sleep(0.5)
        for name in ("a", "b"):
            lines = [ln for ln in (work / f"replica-{name}.log").read_text().splitlines() if "POST /v1/completions" in ln]
            print(f"replica {name} (port {ports[name]}) answered {len(lines)} completions")
    finally:
        for p in procs:
            p.terminate()
        for p in procs:
            p.wait(timeout=60)


if __name__ == "__main__":
    main()
