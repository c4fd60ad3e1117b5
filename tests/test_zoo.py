"""The tiny zoo: the CLI writes loadable folders, and builds are reproducible across processes."""

import hashlib
import subprocess
import sys

from multiedit.cli import main
from multiedit.testing import ZOO_PARTS, part_builder


def test_every_zoo_part_has_a_builder():
    for name in ZOO_PARTS:
        assert callable(part_builder(name))


def test_zoo_cli_writes_parts_and_keeps_existing_ones(tmp_path, capsys):
    assert main(["zoo", "--out", str(tmp_path), "--parts", "sd", "ip2p"]) == 0
    assert (tmp_path / "sd" / "model_index.json").is_file() and (tmp_path / "ip2p" / "unet").is_dir()
    stamp = (tmp_path / "sd" / "unet" / "diffusion_pytorch_model.safetensors").stat().st_mtime_ns
    assert main(["zoo", "--out", str(tmp_path), "--parts", "sd"]) == 0
    assert (tmp_path / "sd" / "unet" / "diffusion_pytorch_model.safetensors").stat().st_mtime_ns == stamp
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]


BUILD = """
import hashlib, json, sys, tempfile, pathlib
from multiedit.testing import build_zoo
d = pathlib.Path(tempfile.mkdtemp())
p = build_zoo(d, parts=["pipeline"], seed=int(sys.argv[1]))["pipeline"]
h = hashlib.sha256()
for f in sorted(p.rglob("*")):
    if f.suffix == ".safetensors":
        h.update(f.read_bytes())
    elif f.suffix == ".json":  # configs record where they were loaded from (a temporary folder)
        data = json.loads(f.read_text())
        data.pop("_name_or_path", None)
        h.update(json.dumps(data, sort_keys=True).encode())
print(h.hexdigest())
"""


def test_zoo_builds_are_byte_identical_across_processes():
    run = lambda seed: subprocess.run([sys.executable, "-c", BUILD, str(seed)], capture_output=True, text=True,
                                      check=True).stdout.strip().splitlines()[-1]
    first, second, other = run(0), run(0), run(1)
    assert first == second
    assert first != other
