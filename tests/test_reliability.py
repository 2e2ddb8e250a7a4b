"""Faults and bad inputs (issue 21): each gets a clear error naming the file or name, or is repaired and
reported, and nothing already tracked is lost."""

import os
import socket
import sqlite3
import subprocess
import sys
import threading
import time
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch
from mlflow.tracking import MlflowClient

from conftest import SpyMethod, ToyAdapter
from lesionbench.cli import _pairs, main
from lesionbench.config import ConfigError, DataConfig, resolve_data_config
from lesionbench.datasets.layout import BraTS, nifti_dataset
from lesionbench.filenames import safe_name
from lesionbench.pipeline import PreparedDataset
from lesionbench.plugins import PluginError, load_plugins
from lesionbench.fitlog import HarnessLog
from lesionbench.planning import RunRequest
from lesionbench.runner import run_grid
from lesionbench.splits import read_split
from lesionbench.tracking import Tracker
from lesionbench.volume import DataError, Volume

TOY_SET = ["data.size=16", "data.val_fraction=0.2", "data.test_fraction=0.3"]
#: Ten toy cases: seven train, one validates, two test (odd ids carry a lesion).
TOY_SPLIT = {f"toy-{i:02d}": p for i, p in enumerate(["train"] * 3 + ["val"] + ["train"] * 2 + ["test", "test"] + ["train"] * 2)}


def _toy_plugins():
    plugins = load_plugins(autoload=False)
    plugins.datasets.add(ToyAdapter)
    plugins.methods.add(SpyMethod)
    return plugins


def _db_bytes(workdir: Path) -> bytes:
    return (workdir / "mlflow.db").read_bytes()


def _dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


# -- a workdir with one finished cell, and runs left RUNNING by a dead and a live process (items 7, 10) --------


@pytest.fixture(scope="module")
def tracked(tmp_path_factory):
    workdir = tmp_path_factory.mktemp("tracked")
    tracker = Tracker(f"sqlite:///{workdir / 'mlflow.db'}", artifact_root=workdir / "artifacts")
    dead = tracker.start("killed-cell", {"run_kind": "run"}, {})
    tracker.client.set_tag(dead.run_id, "pid", str(_dead_pid()))  # as if its process had been killed
    live = tracker.start("live-cell", {"run_kind": "run"}, {})  # this test process: alive
    elsewhere = tracker.start("other-host-cell", {"run_kind": "run"}, {})
    tracker.client.set_tag(elsewhere.run_id, "host", "another-machine")
    tracker.client.set_tag(elsewhere.run_id, "pid", str(_dead_pid()))
    request = RunRequest(methods=["spy"], datasets=["toy"], profile="smoke", workdir=workdir, device="cpu",
                         set_options=TOY_SET)
    [result] = run_grid(request, _toy_plugins())
    assert result.status == "finished", result.error
    return workdir, {"dead": dead.run_id, "live": live.run_id, "elsewhere": elsewhere.run_id, "cell": result.run_id}


def test_a_killed_cells_run_is_failed_only_when_its_owner_is_known_dead(tracked):
    workdir, ids = tracked
    client = MlflowClient(f"sqlite:///{workdir / 'mlflow.db'}")
    dead = client.get_run(ids["dead"])
    assert dead.info.status == "FAILED"
    assert f"pid {dead.data.tags['pid']} on {socket.gethostname()}" in dead.data.tags["error"]
    live = client.get_run(ids["live"])
    assert live.info.status == "RUNNING"  # its process (this one) is alive: maybe still working
    assert live.data.tags["host"] == socket.gethostname() and live.data.tags["pid"] == str(os.getpid())
    assert client.get_run(ids["elsewhere"]).info.status == "RUNNING"  # another host: cannot tell
    assert client.get_run(ids["cell"]).data.tags["pid"]  # every run records its owner


def test_leaderboard_out_a_folder_or_unwritable_path_is_a_clear_error(tracked, tmp_path, capsys):
    workdir, _ = tracked
    before = _db_bytes(workdir)
    assert main(["leaderboard", "--workdir", str(workdir), "--format", "md", "--out", str(tmp_path)]) == 2
    assert f"--out {tmp_path}: cannot write" in capsys.readouterr().err
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    assert main(["leaderboard", "--workdir", str(workdir), "--format", "md", "--out", str(blocker / "board.md")]) == 2
    assert "cannot write the leaderboard there" in capsys.readouterr().err
    assert _db_bytes(workdir) == before  # nothing tracked was touched
    assert main(["leaderboard", "--workdir", str(workdir), "--format", "md", "--out", str(tmp_path / "board.md"), "--bootstrap", "0"]) == 0
    assert "spy" in (tmp_path / "board.md").read_text()


# -- the MLflow store (items 1, 7, 11) ---------------------------------------------------------------------


def test_a_fresh_store_is_created_by_one_process_while_the_others_wait(tmp_path):
    import fcntl

    import mlflow.store.tracking.sqlalchemy_store  # noqa: F401  (imported now: the worker reaches the file at once)

    db = tmp_path / "mlflow.db"
    created = []
    with open(tmp_path / "mlflow.db.lock", "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # another process is creating the store
        worker = threading.Thread(target=lambda: created.append(Tracker(f"sqlite:///{db}")))
        worker.start()
        for _ in range(20):
            time.sleep(0.1)
            assert not db.exists()  # it waits instead of migrating the same file at once
        assert worker.is_alive()
        fcntl.flock(lock, fcntl.LOCK_UN)
    worker.join(60)
    assert created and created[0].experiment_id
    tables = {r[0] for r in sqlite3.connect(db).execute("select name from sqlite_master where type='table'")}
    assert {"experiments", "runs", "alembic_version"} <= tables and not any(t.startswith("_alembic_tmp") for t in tables)


def test_a_corrupt_store_is_a_clear_error_for_run_and_leaderboard_and_is_left_as_it_is(tmp_path, capsys):
    (tmp_path / "mlflow.db").write_bytes(b"not a database " * 100)
    before = _db_bytes(tmp_path)
    assert main(["run", "--methods", "intensity", "--datasets", "synth-ms", "--profile", "smoke", "--workdir", str(tmp_path),
                 "--device", "cpu"]) == 2
    err = capsys.readouterr().err
    assert f"MLflow store {tmp_path / 'mlflow.db'} cannot be opened" in err and "move it aside" in err
    assert main(["leaderboard", "--workdir", str(tmp_path)]) == 2
    assert f"MLflow store {tmp_path / 'mlflow.db'} cannot be opened" in capsys.readouterr().err
    assert _db_bytes(tmp_path) == before


def test_leaderboard_on_an_empty_store_does_not_write_to_it(tmp_path, capsys):
    (tmp_path / "mlflow.db").touch()
    assert main(["leaderboard", "--workdir", str(tmp_path)]) == 2
    assert "holds no tables (nothing was tracked there)" in capsys.readouterr().err
    assert (tmp_path / "mlflow.db").stat().st_size == 0


# -- names that become paths (items 2, 11) -------------------------------------------------------------------


@pytest.mark.parametrize("name", ["../../../x", "/abs/path", "..", "", "a/b", "a\\b", "tab\there"])
def test_unsafe_names_are_refused(name):
    with pytest.raises(ConfigError, match="cannot name a file"):
        safe_name(name, "label")


def test_names_with_brackets_and_equals_are_fine():
    assert safe_name("wolleb-wargnier[variant=guidance,lr=0.001]", "label") == "wolleb-wargnier[variant=guidance,lr=0.001]"
    with pytest.raises(ConfigError, match="holds '='"):
        safe_name("my=data", "dataset name", forbid="=")


def test_a_label_that_is_a_path_writes_nothing_outside_the_maps_folder(tmp_path, capsys):
    config = tmp_path / "cfg.toml"
    config.write_text('[intensity]\nlabel = "../../../escaped"\n')
    maps = tmp_path / "out" / "maps"
    code = main(["run", "--methods", "intensity", "--datasets", "synth-ms", "--profile", "smoke", "--device", "cpu",
                 "--workdir", str(tmp_path / "w"), "--config", str(config), "--save-maps", str(maps)])
    assert code == 2
    assert "label '../../../escaped' cannot name a file" in capsys.readouterr().err
    assert not list(tmp_path.rglob("escaped*"))


def test_a_layout_name_that_is_a_path_or_holds_equals_is_refused_naming_the_file(tmp_path):
    for name, reason in (("../../x", "path separator"), ("a=b", "holds '='")):
        layout = tmp_path / "layout.toml"
        layout.write_text(f'name = "{name}"\nlesion = "{{case}}/seg.nii.gz"\n[modalities]\nflair = "{{case}}/flair.nii.gz"\n')
        with pytest.raises(ConfigError, match=f"dataset file {layout}: name .*{reason}"):
            nifti_dataset(layout)


def test_a_case_id_that_is_a_path_never_reaches_the_cache(tmp_path):
    class Escaping(ToyAdapter):
        def cases(self):
            return ["../toy-01", *super().cases()[1:]]

        def load(self, case):
            return super().load("toy-01" if case == "../toy-01" else case)

    split = dict(TOY_SPLIT)
    split["../toy-01"] = split.pop("toy-01")
    with pytest.raises(ConfigError, match="case id '../toy-01' cannot name a file"):
        PreparedDataset(Escaping(), DataConfig(size=16), split, tmp_path / "cache")
    assert not list(tmp_path.glob("*.case"))


def test_root_splits_at_the_first_equals_and_a_bare_path_may_hold_one():
    assert _pairs(["open-ms=/data/a=b"], "--root") == {"open-ms": "/data/a=b"}
    assert _pairs(["/data/split=1.json"], "--split", default_key="*") == {"*": "/data/split=1.json"}
    with pytest.raises(SystemExit, match="expected NAME=PATH"):
        _pairs(["=/data"], "--root")


def test_a_root_for_no_dataset_of_the_run_is_refused(tmp_path, capsys):
    assert main(["run", "--methods", "intensity", "--datasets", "synth-ms", "--profile", "smoke", "--workdir", str(tmp_path),
                 "--root", "synth-mss=/data"]) == 2
    assert "--root synth-mss=...: no dataset of this run is named 'synth-mss'" in capsys.readouterr().err


# -- configuration values (items 6, 7, 11) -----------------------------------------------------------------


@pytest.mark.parametrize(
    "setting, message",
    [
        (["data.clip_low=99", "data.clip_high=1"], "0 <= clip_low < clip_high <= 100"),
        (["data.clip_high=150"], "0 <= clip_low < clip_high <= 100"),
        (["data.size=8"], "data.size=8: the smallest slice size is 16"),
        (["data.val_fraction=0.5", "data.test_fraction=0.5"], "leaves no training case"),
        (["data.test_fraction=0"], "data.test_fraction=0.0"),
        (["data.min_lesion_voxels=0"], "data.min_lesion_voxels=0"),
        (["data.min_brain_fraction=2"], "data.min_brain_fraction=2.0"),
        (["data.modalities=flair,flair"], "names ['flair'] more than once"),
        (["data.predict_batch=0"], "data.predict_batch=0"),
        (["data.depth=2"], "data.depth=2"),
    ],
)
def test_out_of_range_data_values_are_clear_errors(tmp_path, capsys, setting, message):
    args = [a for s in setting for a in ("--set", s)]
    assert main(["run", "--methods", "intensity", "--datasets", "synth-ms", "--profile", "smoke", "--workdir", str(tmp_path),
                 "--device", "cpu", *args]) == 2
    assert message in capsys.readouterr().err
    assert not (tmp_path / "mlflow.db").exists()  # refused before anything ran


def test_a_type_error_in_a_config_file_names_the_file_not_set(tmp_path, capsys):
    config = tmp_path / "cfg.toml"
    config.write_text('[data]\nsize = "big"\n[intensity]\n')
    assert main(["run", "--methods", "intensity", "--datasets", "synth-ms", "--profile", "smoke", "--workdir", str(tmp_path),
                 "--config", str(config)]) == 2
    err = capsys.readouterr().err
    assert f"config file {config}: data.size: expected int, got 'big'" in err and "--set" not in err
    with pytest.raises(ConfigError, match="data.size: expected int, got True"):
        resolve_data_config("smoke", {"size": True}, [])


# -- data (items 3, 4, 5) -------------------------------------------------------------------------------------


def _nifti(path: Path, data) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    nib.save(nib.Nifti1Image(np.asarray(data, np.float32), np.eye(4)), str(path))
    return path


def _case(root: Path, case: str, background: float = 0.0, flair_constant: bool = False, brain_file: bool = True):
    rng = np.random.default_rng(0)
    x, y, z = np.mgrid[:16, :16, :10]
    brain = ((x - 8) / 6) ** 2 + ((y - 8) / 6) ** 2 + ((z - 5) / 4) ** 2 < 1
    flair = np.where(brain, rng.normal(100, 5, brain.shape), background)
    if flair_constant:
        flair[brain] = 0.0
    t2 = np.where(brain, rng.normal(80, 5, brain.shape), background)
    _nifti(root / case / "flair.nii.gz", flair)
    _nifti(root / case / "t2.nii.gz", t2)
    _nifti(root / case / "seg.nii.gz", np.zeros(brain.shape))
    if brain_file:
        _nifti(root / case / "brainmask.nii.gz", brain)


LAYOUT = """name = "mine"
lesion = "{case}/seg.nii.gz"
brain = "{case}/brainmask.nii.gz"
%s
[modalities]
flair = "{case}/flair.nii.gz"
t2 = "{case}/t2.nii.gz"
"""


def test_a_declared_brain_mask_that_is_missing_is_an_error_naming_the_expected_path(tmp_path):
    _case(tmp_path / "data", "c1", background=-1.0, brain_file=False)
    (tmp_path / "layout.toml").write_text(LAYOUT % "")
    adapter = nifti_dataset(tmp_path / "layout.toml")(root=tmp_path / "data")
    with pytest.raises(DataError, match=f"case c1: missing brain mask file {tmp_path / 'data' / 'c1' / 'brainmask.nii.gz'}"):
        adapter.load("c1")


def test_the_non_zero_voxels_are_no_brain_on_a_non_zero_background(tmp_path):
    _case(tmp_path / "data", "c1", background=-1.0, brain_file=False)
    (tmp_path / "layout.toml").write_text(LAYOUT % "brain_optional = true")
    adapter = nifti_dataset(tmp_path / "layout.toml")(root=tmp_path / "data")
    with pytest.raises(DataError, match=r"case c1: no brain mask, and the background is not 0: 100% of the volume's outer faces"):
        adapter.load("c1")
    _case(tmp_path / "zero", "c1", background=0.0, brain_file=False)  # skull-stripped: the non-zero voxels are the brain
    volume = nifti_dataset(tmp_path / "layout.toml")(root=tmp_path / "zero").load("c1")
    assert 0.1 < volume.brain.mean() < 0.6


def test_builtin_layouts_keep_their_optional_brain_masks():
    assert BraTS.layout.brain_optional and BraTS.layout.brain


def test_a_constant_modality_inside_the_brain_is_refused_naming_the_file(tmp_path, capsys):
    _case(tmp_path / "data", "c1", flair_constant=True)
    (tmp_path / "layout.toml").write_text(LAYOUT % "")
    adapter = nifti_dataset(tmp_path / "layout.toml")(root=tmp_path / "data")
    with pytest.raises(DataError, match=f"case c1: {tmp_path / 'data' / 'c1' / 'flair.nii.gz'} is constant \\(0\\) inside the brain"):
        adapter.load("c1")
    assert main(["check-data", "--dataset", str(tmp_path / "layout.toml"), "--root", str(tmp_path / "data"),
                 "--set", "data.size=16"]) == 1
    assert "flair.nii.gz is constant" in capsys.readouterr().out
    brain = np.ones((2, 4, 4), bool)
    with pytest.raises(DataError, match=r"case v: modalities \['t2'\] are constant inside the brain"):
        Volume("v", np.stack([np.random.default_rng(0).random((2, 4, 4)), np.full((2, 4, 4), 3.0)]).astype(np.float32),
               None, brain, ("flair", "t2"))


def test_a_split_file_naming_a_case_twice_is_refused(tmp_path):
    path = tmp_path / "split.json"
    path.write_text('{"a": "train", "b": "test", "a": "test"}')
    with pytest.raises(ConfigError, match=rf"split file {path} names case\(s\) \['a'\] more than once"):
        read_split(path, ["a", "b"])


# -- plugins (item 8) -----------------------------------------------------------------------------------------


def test_a_plugin_calling_sys_exit_is_named_and_skipped_or_fatal_in_strict_mode(tmp_path, monkeypatch):
    import importlib

    (tmp_path / "quitter.py").write_text("import sys\nsys.exit(3)\n")
    info = tmp_path / "quitter-0.1.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: quitter\nVersion: 0.1\n")
    (info / "entry_points.txt").write_text("[lesionbench]\nquitter = quitter\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    importlib.invalidate_caches()
    with pytest.warns(UserWarning, match=r"plugin 'quitter' failed and is skipped: SystemExit: it called sys.exit\(3\)"):
        plugins = load_plugins(strict=False, autoload=True)
    assert "intensity" in plugins.methods.names()
    with pytest.raises(PluginError, match="plugin 'quitter' failed: SystemExit"):
        load_plugins(strict=True, autoload=True)


# -- caches (items 9, 12) -------------------------------------------------------------------------------------


class _Owner:
    name = "owner"


def test_a_truncated_trained_part_is_set_aside_named_and_retrained(tmp_path):
    log = HarnessLog(None, _Owner(), [], 1, "auprc", parts_dir=tmp_path, parts_key=[0])
    log.cached("net", {"width": 4}, lambda: {"w": torch.ones(64)})
    [path] = tmp_path.glob("*.pt")
    path.write_bytes(path.read_bytes()[:300])
    with pytest.warns(UserWarning, match=f"trained part {path} is unreadable .*set aside as {path.name}.corrupt, trained again"):
        state = log.cached("net", {"width": 4}, lambda: {"w": torch.zeros(64)})
    assert torch.equal(state["w"], torch.zeros(64))  # trained again
    assert path.with_name(path.name + ".corrupt").exists()
    assert torch.equal(log.cached("net", {"width": 4}, lambda: pytest.fail("retrained"))["w"], torch.zeros(64))


class _Payload:
    def __reduce__(self):
        return (print, ("this must never run",))


def test_a_part_refused_by_the_weights_only_loader_names_the_file(tmp_path):
    log = HarnessLog(None, _Owner(), [], 1, "auprc", parts_dir=tmp_path, parts_key=[0])
    log.cached("net", {}, lambda: {"w": torch.ones(2)})
    [path] = tmp_path.glob("*.pt")
    torch.save({"part_state": _Payload()}, path)
    with pytest.raises(RuntimeError, match=f"trained part {path}: refused by torch.load\\(weights_only=True\\)"):
        log.cached("net", {}, lambda: pytest.fail("a planted file is not silently replaced"))
    assert path.exists()


def test_a_truncated_prepared_case_is_set_aside_named_and_prepared_again(tmp_path):
    cache = tmp_path / "cache"
    first = PreparedDataset(ToyAdapter(subjects=10), DataConfig(size=16), TOY_SPLIT, cache)
    expected = {c.case_id: c.image.copy() for c in first.test_cases()}
    entries = [e for e in cache.glob("toy-*.case") if e.name.split("-")[2] in ("06", "07")]  # the test cases
    assert len(entries) == 2
    for entry in entries:
        entry.write_bytes(entry.read_bytes()[:400])
    [geometry] = cache.glob("geometry-*.json")
    geometry.write_text('{"geometry": ')
    with pytest.warns(UserWarning) as record:
        again = PreparedDataset(ToyAdapter(subjects=10), DataConfig(size=16), TOY_SPLIT, cache)
        cases = again.test_cases()
    messages = [str(w.message) for w in record]
    for path in (geometry, *entries):
        assert any(f"cache file {path} is unreadable" in m and f"set aside as {path.name}.corrupt, made again" in m
                   for m in messages), path
    assert {c.case_id: c.image for c in cases}.keys() == expected.keys()
    assert all(np.array_equal(c.image, expected[c.case_id]) for c in cases)
    assert geometry.with_name(geometry.name + ".corrupt").exists()
    assert sorted(cache.glob("toy-*.case.corrupt")) == sorted(e.with_name(e.name + ".corrupt") for e in entries)
