"""The plugin contract: built-ins through the same hooks, entry points, broken plugins, strict mode."""

import os
import re
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from lesionbench.plugins import PluginError, Registry, UnknownNameError, load_plugins

EXTERNAL_PLUGIN = '''
from dataclasses import dataclass
import lesionbench
from lesionbench.method import AnomalyOutput, Method, Supervision

@dataclass
class Cfg:
    offset: float = 0.0

class ChannelMean(Method):
    name = "ext-mean"
    description = "mean over channels (an external test plugin)"
    supervision = Supervision.NONE
    Config = Cfg
    profiles = {"smoke": {}, "demo": {}, "quick": {}, "paper": {}}
    def fit(self, train, val, log):
        self.level = float(train.images.mean())
    def predict(self, images):
        return AnomalyOutput(images.mean(dim=1) + self.config.offset)

@lesionbench.hookimpl
def lesionbench_register_methods(registry):
    registry.add(ChannelMean)
'''


def install_fake_distribution(site: Path, name: str, module_source: str, entry_points: str) -> None:
    """A minimal installed distribution (dist-info with entry points) in a directory on sys.path."""
    (site / f"{name}.py").write_text(module_source)
    info = site / f"{name}-0.1.dist-info"
    info.mkdir()
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {name}\nVersion: 0.1\n")
    (info / "entry_points.txt").write_text(textwrap.dedent(entry_points))


def test_builtins_are_registered_through_the_hooks():
    plugins = load_plugins(autoload=False)
    assert {"intensity", "vae"} <= set(plugins.methods.names())
    assert {"synth-tumor", "synth-ms"} <= set(plugins.datasets.names())
    assert plugins.methods.origin("intensity") == "lesionbench.methods.intensity"


def test_duplicate_names_are_refused_naming_both_plugins():
    reg = Registry("method")
    first = type("A", (), {"name": "dup"})
    reg.current_plugin = "plugin-one"
    reg.add(first)
    reg.current_plugin = "plugin-two"
    with pytest.raises(PluginError, match="plugin plugin-two: method name 'dup' is already registered by plugin plugin-one"):
        reg.add(type("B", (), {"name": "dup"}))


def test_unknown_name_lists_the_known_ones():
    plugins = load_plugins(autoload=False)
    with pytest.raises(UnknownNameError, match="unknown method 'nope'; known: .*intensity"):
        plugins.methods.get("nope")


@pytest.fixture
def site(tmp_path, monkeypatch):
    site = tmp_path / "site"
    site.mkdir()
    monkeypatch.syspath_prepend(str(site))
    import importlib

    importlib.invalidate_caches()
    return site


def test_broken_plugin_is_reported_and_skipped_or_fatal_in_strict_mode(site, monkeypatch):
    install_fake_distribution(site, "goodplugin", EXTERNAL_PLUGIN, "[lesionbench]\ngood = goodplugin\n")
    install_fake_distribution(site, "badplugin", "raise ImportError('missing dependency xyz')\n", "[lesionbench]\nbroken = badplugin\n")
    install_fake_distribution(
        site, "dupplugin",
        "import lesionbench\nfrom lesionbench.methods.intensity.method import Intensity\n"
        "@lesionbench.hookimpl\ndef lesionbench_register_methods(registry):\n    registry.add(Intensity)\n",
        "[lesionbench]\nclash = dupplugin\n",
    )
    with pytest.warns(UserWarning, match="plugin 'broken' failed and is skipped: ImportError: missing dependency xyz"):
        plugins = load_plugins(strict=False, autoload=True)
    assert "ext-mean" in plugins.methods.names() and "intensity" in plugins.methods.names()
    failures = dict(plugins.failures)
    assert set(failures) == {"broken", "clash"}
    assert "already registered by plugin lesionbench.methods.intensity" in failures["clash"]
    with pytest.raises(PluginError, match="plugin 'broken' failed"):
        load_plugins(strict=True, autoload=True)
    monkeypatch.setenv("LESIONBENCH_DISABLE_PLUGIN_AUTOLOAD", "1")
    assert "ext-mean" not in load_plugins().methods.names()


EXAMPLE_PLUGIN = Path(__file__).resolve().parents[1] / "examples" / "zscore-plugin"


def test_the_example_plugin_installs_and_runs_through_the_cli_like_a_builtin(tmp_path):
    """examples/zscore-plugin is installed by pip (its own pyproject.toml and entry point) and run as a method."""
    site = tmp_path / "site"
    pip = subprocess.run([sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--no-index", "--no-build-isolation",
                          "--target", str(site), str(EXAMPLE_PLUGIN)], capture_output=True, text=True, timeout=300)
    assert pip.returncode == 0, pip.stderr[-3000:]
    assert (site / "lesionbench_zscore-0.1.0.dist-info" / "entry_points.txt").read_text().count("zscore = lesionbench_zscore")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(site), os.environ.get("PYTHONPATH", "")]), "MLFLOW_DISABLE_TELEMETRY": "true"}
    env.pop("LESIONBENCH_DISABLE_PLUGIN_AUTOLOAD", None)
    listed = subprocess.run([sys.executable, "-m", "lesionbench", "list"], env=env, capture_output=True, text=True, timeout=120)
    assert listed.returncode == 0, listed.stderr
    assert re.search(r"│ zscore +│ none +│ zscore ", listed.stdout)  # name, supervision, the plugin's entry point
    workdir = tmp_path / "w"
    run = subprocess.run(
        [sys.executable, "-m", "lesionbench", "run", "--methods", "zscore", "--datasets", "synth-ms", "--profile", "smoke",
         "--workdir", str(workdir), "--device", "cpu"],
        env=env, capture_output=True, text=True, timeout=300,
    )
    assert run.returncode == 0, run.stderr[-3000:]
    assert "zscore" in run.stdout and "1 cells run" in run.stderr
    from mlflow.tracking import MlflowClient

    client = MlflowClient(f"sqlite:///{workdir / 'mlflow.db'}")
    [tracked] = client.search_runs([client.get_experiment_by_name("lesionbench").experiment_id])
    # a real map: the z-score ranks synth-ms lesions (bright on T2 / FLAIR) well above their prevalence
    assert tracked.data.metrics["test/auprc"] > 3 * tracked.data.metrics["test/prevalence"]


def test_the_files_a_plugin_author_reads_stay_short():
    root = Path(__file__).resolve().parents[1]
    files = [root / "benchmark" / "hookspecs.py", root / "benchmark" / "method.py", EXAMPLE_PLUGIN / "lesionbench_zscore" / "__init__.py"]
    assert sum(len(f.read_text().splitlines()) for f in files) < 250
