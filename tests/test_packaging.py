"""ferlab as an installed package: a core install without the extras, the extras' one-line hints."""
from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest
from PIL import Image

from ferlab._optional import EXTRAS

# Runs `ferlab ARGS` in a fresh interpreter in which the optional packages are not installed, as far as Python can
# tell: a None in sys.modules makes `import onnx` raise ModuleNotFoundError and importlib.util.find_spec("onnx")
# answer None, as both do for a package that is absent (torch asks find_spec about onnx, say).
CORE_ONLY = """
import sys
BLOCKED = sys.argv[1].split(",")
sys.modules.update(dict.fromkeys(BLOCKED))
from ferlab.cli import main
code = main(sys.argv[2:])
loaded = sorted(m for m, module in sys.modules.items() if module is not None and m.split(".")[0] in BLOCKED)
assert not loaded, f"optional packages were imported: {loaded}"
sys.exit(code)
"""
OPTIONAL = sorted({m for modules in EXTRAS.values() for m in modules})


def core_only(*args: str, cwd: Path, blocked=OPTIONAL) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", CORE_ONLY, ",".join(blocked), *args], cwd=cwd,
                          capture_output=True, text=True, timeout=300)


@pytest.mark.parametrize("verb, args, line", [
    ("serve", ["--port", "1"], "ferlab serve needs the 'serve' extra: pip install 'ferlab[serve]' "
                               "(fastapi is not installed)"),
    ("export", ["default", "-o", "x.onnx"], "ferlab export needs the 'export' extra: pip install 'ferlab[export]' "
                                            "(onnx is not installed)"),
    ("sweep", ["seed_regularisation"], "ferlab sweep needs the 'sweep' extra: pip install 'ferlab[sweep]' "
                                       "(optuna is not installed)"),
    ("predict", ["photo.png", "--model", "model.onnx"],
     "ferlab predict: an .onnx model needs the 'export' extra: pip install 'ferlab[export]' "
     "(onnxruntime is not installed)"),
])
def test_a_missing_extra_is_one_line_that_names_it(tmp_path, verb, args, line):
    (tmp_path / "model.onnx").write_bytes(b"not read: the extra is checked first")
    Image.new("RGB", (64, 64)).save(tmp_path / "photo.png")
    r = core_only(verb, *args, cwd=tmp_path)
    assert (r.returncode, r.stderr, r.stdout) == (2, line + "\n", "")
    assert not (tmp_path / "x.onnx").exists()


def test_one_missing_package_of_an_extra_is_named(tmp_path):
    # fastapi there, python-multipart not: still the serve extra, and the missing package by name
    r = core_only("serve", cwd=tmp_path, blocked=["python_multipart"])
    assert r.returncode == 2
    assert r.stderr == ("ferlab serve needs the 'serve' extra: pip install 'ferlab[serve]' "
                        "(python_multipart is not installed)\n")


def test_core_install_trains_a_packaged_config_and_predicts(tmp_path, fer_folder):
    """Without any extra: train a packaged config by name from an unrelated folder, then predict with the
    shipped model on a real photo (skimage's astronaut)."""
    skimage_data = pytest.importorskip("skimage.data")
    r = core_only("train", "seed/iter1_simple_cnn", "epochs=1", "fraction=0.5", "tta=false", "threads=1",
                  "out_dir=runs", "--data", str(fer_folder), "--no-progress", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    run = tmp_path / "runs" / "seed_iter1_simple_cnn"
    assert (run / "best.pt").is_file() and json.loads((run / "summary.json").read_text())["epochs"] == 1

    Image.fromarray(skimage_data.astronaut()).save(tmp_path / "astronaut.jpg")
    r = core_only("predict", "astronaut.jpg", "--no-progress", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    (face,) = [json.loads(line) for line in r.stdout.splitlines()]
    assert (face["source"], face["label"]) == ("astronaut.jpg", "happy") and face["probs"]["happy"] > 0.5


def test_version_and_python_m_ferlab(tmp_path):
    import ferlab
    ferlab_script = Path(sys.executable).with_name("ferlab")  # the console script beside this interpreter
    for cmd in ([str(ferlab_script), "--version"], [sys.executable, "-m", "ferlab", "--version"]):
        r = subprocess.run(cmd, cwd=tmp_path, capture_output=True, text=True, timeout=60)
        assert (r.returncode, r.stdout, r.stderr) == (0, f"ferlab {ferlab.__version__}\n", ""), cmd
    r = subprocess.run([sys.executable, "-m", "ferlab", "configs", "vgg_s_cpu48"], cwd=tmp_path, capture_output=True,
                       text=True, timeout=60)
    assert r.returncode == 0 and "name: vgg_s_cpu48" in r.stdout
    r = subprocess.run([sys.executable, "-m", "ferlab", "train", "vgg_s_cpu_48"], cwd=tmp_path, capture_output=True,
                       text=True, timeout=60)
    assert r.returncode == 2 and "did you mean 'vgg_s_cpu48'?" in r.stderr


def test_wheel_ships_configs_weights_web_page_license_and_extras(tmp_path):
    """Build the wheel as `pip install .` would (from a clean copy: setuptools' build/ folder keeps files
    deleted since) and read what it holds."""
    import email
    import shutil
    import zipfile

    import ferlab
    repo = Path(__file__).resolve().parents[1]
    src = tmp_path / "checkout"
    shutil.copytree(repo / "src", src / "src", ignore=shutil.ignore_patterns("__pycache__", "*.egg-info"))
    for name in ("pyproject.toml", "README.md", "LICENSE"):
        shutil.copy(repo / name, src / name)
    r = subprocess.run([sys.executable, "-m", "pip", "wheel", str(src), "--no-deps", "--no-build-isolation", "-q",
                        "-w", str(tmp_path / "dist")], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    (wheel,) = (tmp_path / "dist").glob("ferlab-*.whl")
    assert wheel.stat().st_size < 40 * 2**20  # every shipped model included
    with zipfile.ZipFile(wheel) as z:
        names = set(z.namelist())
        info = f"ferlab-{ferlab.__version__}.dist-info"
        meta = email.message_from_bytes(z.read(f"{info}/METADATA"))
        license_text = z.read(f"{info}/licenses/LICENSE").decode()
    package = repo / "src" / "ferlab"
    shipped = {f"ferlab/{p.relative_to(package).as_posix()}" for p in package.rglob("*")
               if p.is_file() and "__pycache__" not in p.parts}
    assert shipped - names == set()  # every module, config, the weights and the web page's files
    for needed in ("ferlab/configs/vgg_s_cpu48.yaml", "ferlab/configs/seed/iter1_simple_cnn.yaml",
                   "ferlab/configs/sweeps/seed_regularisation.yaml", "ferlab/weights/default.pt",
                   "ferlab/weights/ensemble.pt", "ferlab/weights/ferplus.pt", "ferlab/serve/static/index.html", "ferlab/serve/static/app.js", "ferlab/py.typed"):
        assert needed in names

    assert license_text == (repo / "LICENSE").read_text() and "MIT License" in license_text
    assert (meta["Name"], meta["Version"], meta["License-Expression"]) == ("ferlab", ferlab.__version__, "MIT")
    assert set(meta.get_all("Provides-Extra")) == {*EXTRAS, "all", "dev"}

    def dist(requirement: str) -> str:  # "psycopg[binary]>=3.1; extra == ..." -> "psycopg"
        return re.split(r"[\[<>=!~;\s]", requirement, maxsplit=1)[0].lower().replace("_", "-")

    requires = meta.get_all("Requires-Dist")
    core = {dist(r) for r in requires if "extra ==" not in r}
    for extra, modules in EXTRAS.items():  # ferlab._optional's names agree with the extras the wheel declares
        declared = {dist(r) for r in requires if r.endswith(f'extra == "{extra}"')}
        assert declared == {m.replace("_", "-") for m in modules}, extra
        assert not declared & core, f"{extra} packages among the core dependencies"
    assert {"torch", "numpy", "pillow", "pyyaml", "opencv-python-headless", "mtcnn"} <= core
