"""The contract every project follows (projects/README.md, "The contract").

One prepare dialect (`--raw --cache --overwrite`, old flags as hidden aliases), one cache location for make
targets, prepare defaults and configs alike, `python -m projects.<p>.<cmd>` entry points with no `sys.path`
edits, and commands that name what makes a missing data set or checkpoint before they build a model.
"""

from __future__ import annotations

import importlib
import os
import shlex
import subprocess
import sys
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra

from common.errors import DataError
from common.model_card import compose_experiment
from common.preflight import check_inputs
from common.run import CONF_ROOT

REPO = Path(__file__).resolve().parents[1]
PROJECTS = ("saint", "easysr", "rstn", "spin", "fastmri_gen")
# (project, its paper experiment, the make target that prepares that experiment's data)
PAPER = [("saint", "msd_msr", "prepare-saint"), ("easysr", "reference", "prepare-easysr"),
         ("rstn", "nih_pancreas", "prepare-rstn"), ("rstn", "msd_pancreas", "prepare-rstn-msd"),
         ("spin", "atlas_traintest", "prepare-spin"), ("fastmri_gen", "knee_x4", "prepare-fastmri-gen")]
# (project, old flag, the flag it became)
RENAMED = [("saint", "--msd", "--raw"), ("saint", "--out", "--cache"), ("easysr", "--force", "--overwrite"),
           ("rstn", "--src", "--raw"), ("spin", "--root", "--raw"), ("fastmri_gen", "--data-dir", "--raw"),
           ("fastmri_gen", "--cache-dir", "--cache")]
COMMANDS = ("train", "eval", "predict", "prepare", "demo", "import_weights")
# what a model being built prints (Lightning's model summary, the Trainer's device lines)
MODEL_SIGNS = ("Params", "GPU available", "Total params")


def _parser(project: str):
    return importlib.import_module(f"projects.{project}.prepare").build_parser()


def _env(data: Path) -> dict[str, str]:
    """The environment of a subprocess: this checkout's code, `data` as the data root."""
    return {**os.environ, "MEDIMG_DATA": str(data), "PYTHONPATH": str(REPO), "COLUMNS": "200"}


@pytest.mark.parametrize("project", PROJECTS)
def test_prepare_takes_raw_cache_overwrite_and_hides_the_old_flags(project, capsys):
    parser = _parser(project)
    args = parser.parse_args(["--raw", "R", "--cache", "C", "--overwrite"])
    assert (args.raw in ("R", ["R"]), args.cache, args.overwrite) == (True, "C", True)
    parser.print_help()
    text = capsys.readouterr().out
    for _, old, _ in (r for r in RENAMED if r[0] == project):
        assert old not in text


@pytest.mark.parametrize(("project", "old", "new"), RENAMED, ids=[f"{p}{o}" for p, o, _ in RENAMED])
def test_an_old_flag_still_works_and_names_the_new_one(project, old, new, capsys):
    argv = [old] if new == "--overwrite" else [old, "somewhere"]
    args = _parser(project).parse_args(argv)
    value = getattr(args, new.lstrip("-"))
    assert value is True if new == "--overwrite" else value in ("somewhere", ["somewhere"])
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [f"note: {old} is now {new}; the old name goes in the next release"]


@pytest.mark.parametrize(("project", "experiment", "target"), PAPER, ids=[t for _, _, t in PAPER])
def test_make_prepare_writes_the_folders_the_paper_experiment_reads(project, experiment, target, tmp_path,
                                                                    monkeypatch):
    data = tmp_path / "data"
    monkeypatch.setenv("MEDIMG_DATA", str(data))
    dry_run = subprocess.run(["make", "-s", "-n", "-C", str(REPO), target], env=_env(data), capture_output=True,
                             text=True, check=True, timeout=60).stdout
    line = next(x for x in dry_run.splitlines() if f"projects.{project}.prepare" in x)
    argv = shlex.split(line)
    cache, raw = argv[argv.index("--cache") + 1], argv[argv.index("--raw") + 1]
    cfg = compose_experiment(project, experiment)
    assert cache == cfg.data.cache_dir
    assert Path(cache).is_relative_to(data / "cache" / project)
    assert Path(raw).is_relative_to(data / "raw")
    raw_in_config = cfg.data.get("raw_dir") or cfg.data.get("data_dir")
    assert raw_in_config in (None, raw)  # the projects that read raw files in training read these
    module = importlib.import_module(f"projects.{project}.prepare")
    if project == "rstn":  # the default cache depends on --layout
        defaults = module.default_paths(argv[argv.index("--layout") + 1])
        assert (str(defaults[0]), str(defaults[1])) == (raw, cache)
    else:
        parser = module.build_parser()
        assert (parser.get_default("cache"), parser.get_default("raw")) in ((cache, raw), (cache, [raw]))


@pytest.mark.slow
@pytest.mark.parametrize(("project", "experiment", "target"), PAPER, ids=[t for _, _, t in PAPER])
def test_training_without_data_names_the_prepare_command_before_building_a_model(project, experiment, target,
                                                                                  tmp_path):
    proc = subprocess.run([sys.executable, "-m", f"projects.{project}.train", f"experiment={experiment}",
                           "logger=none", f"paths.outputs_root={tmp_path / 'outputs'}"],
                          env=_env(tmp_path / "data"), capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert proc.returncode == 2, proc.stderr[-2000:]
    error = proc.stderr.strip().splitlines()[-1]
    assert error.startswith("error: ") and f"run python -m projects.{project}.prepare --raw " in error
    assert f"--cache {tmp_path / 'data' / 'cache' / project}" in error
    assert not any(sign in proc.stdout + proc.stderr for sign in MODEL_SIGNS)


def _compose_eval(project: str, overrides: list[str]):
    GlobalHydra.instance().clear()
    with initialize_config_dir(str(CONF_ROOT / project), version_base="1.3"):
        return compose("eval", overrides=overrides)


@pytest.mark.parametrize("project", PROJECTS)
def test_eval_without_its_checkpoint_names_the_train_command_and_the_demo(project, tmp_path):
    overrides = [f"paths.outputs_root={tmp_path}", "paths.output_dir=unused"]
    if project != "rstn":  # RSTN reads the three plane checkpoints of its training runs (none here)
        overrides.append(f"ckpt_path={tmp_path / 'best.ckpt'}")
    with pytest.raises(DataError, match="checkpoint not found") as err:
        check_inputs(_compose_eval(project, overrides), "test")
    assert f"python -m projects.{project}.train" in str(err.value)
    assert f"make demo-{project.replace('_', '-')}" in str(err.value)
    if project != "rstn":
        with pytest.raises(DataError, match="evaluation needs ckpt_path=PATH"):
            check_inputs(_compose_eval(project, ["paths.output_dir=unused", "ckpt_path=???"]), "test")


@pytest.mark.parametrize(("project", "experiment"), [("spin", "demo"), ("rstn", "demo"), ("fastmri_gen", "demo")])
def test_demo_data_that_builds_itself_passes_the_check(project, experiment, tmp_path):
    cfg = compose_experiment(project, experiment, [f"paths.data_dir={tmp_path}"])
    check_inputs(cfg, "fit")
    assert not any(tmp_path.iterdir())  # the check writes nothing


@pytest.mark.slow
def test_eval_of_the_demo_checkpoint_without_the_demo_says_make_demo(tmp_path):
    """What `make eval-saint-x4` runs before `make demo`: one line naming the demo, exit 2, no model."""
    proc = subprocess.run([sys.executable, "-m", "projects.saint.eval", "factor=4",
                           f"ckpt_path={tmp_path / 'demo/run_rfn/checkpoints/best.ckpt'}",
                           f"data.cache_dir={tmp_path / 'demo/cache'}", f"paths.outputs_root={tmp_path}"],
                          env=_env(tmp_path / "data"), capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines()[-1].endswith("or run make demo-saint for the demo's")
    assert not any(sign in proc.stdout + proc.stderr for sign in MODEL_SIGNS)


@pytest.mark.slow
def test_every_command_runs_as_a_module(tmp_path):
    """`python -m projects.<p>.<cmd> --help` for every command of every project (runpy is what `-m` uses)."""
    script = (
        "import runpy, sys\n"
        f"for module in {[f'projects.{p}.{c}' for p in PROJECTS for c in COMMANDS]!r}:\n"
        "    sys.argv = [module, '--help']\n"
        "    try:\n"
        "        runpy.run_module(module, run_name='__main__', alter_sys=True)\n"
        "    except SystemExit as done:\n"
        "        assert done.code in (0, None), (module, done.code)\n"
        "    print('ran', module, flush=True)\n")
    proc = subprocess.run([sys.executable, "-c", script], env=_env(tmp_path), capture_output=True, text=True,
                          timeout=600, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-2000:]
    ran = [x.split()[1] for x in proc.stdout.splitlines() if x.startswith("ran ")]
    assert ran == [f"projects.{p}.{c}" for p in PROJECTS for c in COMMANDS]


@pytest.mark.slow
def test_a_script_path_and_a_module_run_use_the_same_run_folder(tmp_path):
    """`python projects/spin/train.py` (what users type) and `python -m projects.spin.train`, from any folder."""
    folders = {}
    for form, command in (("script", [str(REPO / "projects/spin/train.py")]), ("module", ["-m", "projects.spin.train"])):
        root = tmp_path / form
        proc = subprocess.run([sys.executable, *command, "experiment=atlas_traintest", f"paths.outputs_root={root}"],
                              env=_env(tmp_path / "data"), capture_output=True, text=True, timeout=300, cwd=tmp_path)
        assert proc.returncode == 2 and "projects.spin.prepare" in proc.stderr  # it ran, and found no data
        folders[form] = sorted(str(p.relative_to(root)) for p in root.rglob("*"))
    assert folders["script"] == folders["module"]
    assert "spin/atlas_traintest/.hydra/config.yaml" in folders["module"]


def test_no_file_edits_sys_path():
    offenders = [str(p.relative_to(REPO)) for top in ("common", "projects", "tests", "benchmarks")
                 for p in (REPO / top).rglob("*.py") if "sys.path.insert" in p.read_text()
                 and p.name != "test_contract_prepare.py"]
    assert offenders == []
