import shutil, time, subprocess
from pathlib import Path
from support import RunningServer
from test_heal_e2e import push
from bench.scenarios import release_tree

def test_probe(server: RunningServer, tmp_path: Path) -> None:
    old, new = release_tree("twisted", "26.4.0"), release_tree("twisted", "26.10.0")
    src = tmp_path / "src"
    subprocess.run(["cp", "-a", str(old), str(src)], check=True)
    time.sleep(1.2)
    a = push(server, src)
    shutil.rmtree(src)
    subprocess.run(["cp", "-a", str(new), str(src)], check=True)
    time.sleep(1.2)
    t = time.monotonic()
    r = server.cli("neo-push", "--accept-new-host-key", "--json", str(src), server.remote("t")); print("PROBE", r.stderr); import json; b = json.loads(r.stdout)
    print("PROBE wall", time.monotonic() - t, {k: b[k] for k in ("elapsed_s", "bytes_sent", "bytes_received", "chunks_sent", "chunks_sent_as_deltas", "files_changed") if k in b})
