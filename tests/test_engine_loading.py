"""Loading as a fresh process sees it: hub ids that are not cached, and what importing costs."""

from __future__ import annotations

import json
import os
import subprocess
import sys

from conftest import REPO

LOAD = """
import json, sys
from monitor.engine.local.engine import Engine, ModelLoadError
from monitor.engine.settings import ModelSettings
try:
    Engine.load(ModelSettings(**json.loads(sys.argv[1])))
except ModelLoadError as exc:
    print(exc, file=sys.stderr)
    sys.exit(3)
print("loaded")
"""


def run_load(settings: dict, tmp_path, **env: str) -> subprocess.CompletedProcess:
    environment = {**os.environ, "HF_HOME": str(tmp_path / "hf-home"), **env}
    environment.pop("HF_HUB_CACHE", None)
    return subprocess.run([sys.executable, "-c", LOAD, json.dumps(settings)], cwd=REPO, env=environment,
                          capture_output=True, text=True, timeout=240)


def test_hub_model_neither_cached_nor_reachable_is_one_line_saying_what_to_do(tmp_path):
    proc = run_load({"id": "Qwen/Qwen2-Audio-7B-Instruct"}, tmp_path, HF_HUB_OFFLINE="1")
    assert proc.returncode == 3, proc.stderr
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, proc.stderr
    message = lines[0]
    for needed in ("Qwen/Qwen2-Audio-7B-Instruct", "not in the Hugging Face cache", "hf download",
                   "HF_HOME", "model.path", str(tmp_path / "hf-home")):
        assert needed in message, message
    assert "Traceback" not in proc.stderr


def test_a_cached_copy_loads_through_the_hub_id_without_the_network(tmp_path, tiny_model_dir):
    # lay the tiny model out as the hub cache does, then load it by id with the network off
    home = tmp_path / "hf-home"
    snapshot = home / "hub" / "models--test--tiny-qwen2-audio" / "snapshots" / ("0" * 40)
    snapshot.mkdir(parents=True)
    for f in tiny_model_dir.iterdir():
        (snapshot / f.name).symlink_to(f)
    refs = snapshot.parent.parent / "refs"
    refs.mkdir()
    (refs / "main").write_text("0" * 40)
    proc = run_load({"id": "test/tiny-qwen2-audio"}, tmp_path, HF_HUB_OFFLINE="1")
    assert proc.returncode == 0 and "loaded" in proc.stdout, proc.stderr


def test_config_engine_and_worker_import_without_torch():
    code = ("import sys, monitor.config, monitor.engine, monitor.engine.api, monitor.engine.worker, "
            "monitor.engine.settings; print(sorted(m for m in ('torch', 'transformers') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[]"
