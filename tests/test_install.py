"""Installing keras-mtl from a wheel: configs, launchers and entry points ship.

The wheel is built from a copy of the sources (`pip wheel --no-deps
--no-build-isolation`), so the checkout stays untouched. The default suite
checks its file list and entry points and that `--gin_file` resolves from
any working directory; the slow test installs it into a fresh virtual
environment (dependencies borrowed read-only from the test interpreter's
site-packages, whose editable keras-mtl is not activated there) and runs the
console entry points from an empty folder.
"""

import configparser
import glob
import os
import shutil
import subprocess
import sys
import sysconfig
import zipfile

import gin
import pytest

from keras_mtl import configs

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SCRIPTS = ("train", "evaluate", "export", "benchmark", "demo", "compare")


@pytest.fixture(scope="module")
def wheel(tmp_path_factory):
    src = tmp_path_factory.mktemp("src")
    for name in ("setup.py", "README.md"):
        shutil.copy(os.path.join(ROOT, name), src / name)
    for name in ("keras_mtl", "launch", "gin"):
        shutil.copytree(os.path.join(ROOT, name), src / name,
                        ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    out = tmp_path_factory.mktemp("wheel")
    proc = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", str(src), "--no-deps", "--no-build-isolation",
         "-q", "-w", str(out)], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    (path,) = glob.glob(str(out / "keras_mtl-*.whl"))
    return path


def test_wheel_ships_configs_launchers_and_entry_points(wheel):
    with zipfile.ZipFile(wheel) as z:
        names = set(z.namelist())
        (entry_points,) = [n for n in names if n.endswith(".dist-info/entry_points.txt")]
        scripts = configparser.ConfigParser()
        scripts.read_string(z.read(entry_points).decode())
        (metadata,) = [n for n in names if n.endswith(".dist-info/METADATA")]
        requires = [line for line in z.read(metadata).decode().splitlines()
                    if line.startswith("Requires-Dist:")]
    shipped_gin = {n for n in names if n.endswith(".gin")}
    checkout_gin = {f"keras_mtl/gin/{os.path.basename(p)}"
                    for p in glob.glob(os.path.join(ROOT, "gin", "*.gin"))}
    assert len(checkout_gin) > 60 and shipped_gin == checkout_gin
    for package in ("launch", "keras_mtl"):
        for path in glob.glob(os.path.join(ROOT, package, "**", "*.py"), recursive=True):
            assert os.path.relpath(path, ROOT) in names, path
    assert "launch/bench/gradnorm.py" in names and "launch/compare.py" in names

    console = dict(scripts["console_scripts"])
    assert console == {f"keras-mtl-{s}": f"launch.cli:{s}" for s in SCRIPTS}
    from launch import cli

    for s in SCRIPTS:
        assert callable(getattr(cli, s))
    # keras-mtl's own code uses the stdlib importlib.resources; the backport
    # is declared only for tensorflow-datasets, whose builders import it
    # without declaring it (a fresh install failed the tfds CelebA reader).
    assert [r for r in requires if "importlib" in r] == [
        "Requires-Dist: importlib-resources>=5.0"], requires
    import keras_mtl

    package = os.path.dirname(keras_mtl.__file__)
    for folder, _, files in os.walk(package):
        for f in files:
            if f.endswith(".py"):
                with open(os.path.join(folder, f), encoding="utf-8") as source:
                    assert "importlib_resources" not in source.read(), f


def test_gin_file_resolves_from_any_working_directory(tmp_path, monkeypatch):
    from keras_mtl import experiment

    monkeypatch.chdir(tmp_path)
    shipped = os.path.join(ROOT, "gin", "toy_t2.gin")
    assert os.path.samefile(configs.resolve("toy_t2.gin"), shipped)
    assert os.path.samefile(configs.resolve("gin/toy_t2.gin"), shipped)
    own = tmp_path / "mine.gin"
    own.write_text("include 'toy_gradnorm_t2.gin'\nGradNorm.alpha = 1.5\n")
    assert configs.resolve("mine.gin") == "mine.gin"  # a path that exists wins
    assert "toy_gradnorm_t2.gin" in configs.shipped() and len(configs.shipped()) > 60

    gin.clear_config()
    experiment.register_gin_externals()
    try:
        # includes, nested: mine.gin -> toy_gradnorm_t2.gin -> gin/toy_t2.gin -> gin/toy_base.gin
        configs.parse(["mine.gin"], ["train.steps = 7"])
        assert gin.query_parameter("GradNorm.alpha") == 1.5
        assert gin.query_parameter("toy_data.test_size") == 2_000  # from toy_base.gin
        assert gin.query_parameter("train.steps") == 7
    finally:
        gin.clear_config()
    with pytest.raises(FileNotFoundError, match=r"toy_gradnorm_t2\.gin"):
        configs.resolve("toy_gradnorm_t3.gin")


@pytest.mark.slow  # a fresh environment and four launcher processes: ~2 min on 2 cores
def test_wheel_in_a_fresh_environment_runs_from_an_empty_folder(wheel, tmp_path):
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
    python = str(venv / "bin" / "python")
    site = subprocess.run([python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                          capture_output=True, text=True, check=True).stdout.strip()
    # Dependencies (TensorFlow, Keras, gin, ...) from this interpreter's
    # site-packages; a path listed in a .pth file is not a site dir, so the
    # editable keras-mtl there (a .pth finder) stays inactive.
    with open(os.path.join(site, "deps.pth"), "w") as f:
        f.write(sysconfig.get_paths()["purelib"] + "\n")
    proc = subprocess.run([sys.executable, "-m", "pip", "--python", python, "install",
                           "--no-deps", "-q", wheel], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr[-2000:]

    work = tmp_path / "empty"
    work.mkdir()
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"}
    env.pop("PYTHONPATH", None)

    def run(*args, returncode=0):
        proc = subprocess.run(list(args), cwd=work, capture_output=True, text=True,
                              env=env, timeout=600)
        assert proc.returncode == returncode, (args, proc.stdout[-1000:], proc.stderr[-3000:])
        return proc.stdout + proc.stderr

    where = run(python, "-c", "import importlib.util as u, keras_mtl, launch; "
                "print(keras_mtl.__file__); print(launch.__file__); "
                "print([u.find_spec('launch.bench.' + s) is not None for s in "
                "('gradnorm', 'balancers', 'floor', 'masks', 'astmt', 'distribute')])")
    lines = where.splitlines()
    assert lines[0].startswith(site) and lines[1].startswith(site), lines
    assert lines[2] == "[True, True, True, True, True, True]"

    bin_dir = venv / "bin"
    run(str(bin_dir / "keras-mtl-train"), "--gin_file=toy_gradnorm_t2.gin",
        "--model_dir=run", "--steps=4", "--gin_bindings=train.steps_per_epoch = 2",
        "--gin_bindings=toy_data.train_size = 200", "--gin_bindings=toy_data.test_size = 64")
    for name in ("metrics.json", "model.keras", "task_weights.csv", "operative_config.gin"):
        assert (work / "run" / name).exists(), name
    assert "GradNorm.alpha = 0.12" in (work / "run" / "operative_config.gin").read_text()

    run(str(bin_dir / "keras-mtl-evaluate"), "--model=run", "--out_dir=eval")
    assert "| task_0 | loss |" in (work / "eval" / "metrics.md").read_text()
    run(str(bin_dir / "keras-mtl-export"), "--model=run/model.keras", "--export_dir=export")
    assert (work / "export" / "saved_model.pb").exists()
    # main() runs (and checks its flag) in the installed entry point
    usage = run(str(bin_dir / "keras-mtl-benchmark"), "--suites=nope", returncode=1)
    assert "Unknown suite(s) ['nope']" in usage
    run(str(bin_dir / "keras-mtl-demo"), "--tasks=2", "--steps=2", "--out_dir=demo")
    assert (work / "demo" / "report.md").exists()
    os.makedirs(work / "runs" / "a", exist_ok=True)
    shutil.copytree(work / "run", work / "runs" / "a" / "s0")
    shutil.copytree(work / "demo" / "t2_gradnorm", work / "runs" / "b" / "s0")
    run(str(bin_dir / "keras-mtl-compare"), "--runs_root=runs", "--baseline=a", "--out_dir=cmp")
    assert (work / "cmp" / "comparison.md").exists()
    assert sorted(os.listdir(work)) == ["cmp", "demo", "eval", "export", "run", "runs"]
