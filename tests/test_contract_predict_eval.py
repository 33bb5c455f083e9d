"""Every project's predict speaks the contract's dialect (projects/README.md, "The contract"), and the shared pieces
(cases in and out, renamed flags, device and precision, the eval report) behave as documented."""

from __future__ import annotations

import importlib
import math
from pathlib import Path

import numpy as np
import pytest

from common.errors import DataError
from common.eval_report import eval_report, write_eval_report
from common.io.nifti import save_nifti
from common.predict_cli import list_cases, parse_predict_args, predict_parser, rename_flag
from common.synthetic.dicom_series import write_ct_series
from tests.contract import check_eval_report

PROJECTS = ["saint", "spin", "rstn", "easysr", "fastmri_gen"]
CONTRACT_FLAGS = ["-i INPUT", "--input INPUT", "-o OUTPUT", "--output OUTPUT", "--ckpt CKPT",
                  "--device {auto,cpu,cuda}", "--precision {auto,32,bf16}"]


@pytest.mark.parametrize("project", PROJECTS)
def test_predict_help_lists_the_contract_flags(project: str, capsys) -> None:
    predict = importlib.import_module(f"projects.{project}.predict")
    with pytest.raises(SystemExit) as done:
        predict.main(["--help"])
    assert done.value.code == 0
    usage = capsys.readouterr().out
    assert all(flag in usage for flag in CONTRACT_FLAGS), usage


@pytest.mark.parametrize("project", PROJECTS)
def test_predict_without_the_input_is_a_usage_error(project: str, capsys) -> None:
    predict = importlib.import_module(f"projects.{project}.predict")
    with pytest.raises(SystemExit) as done:
        predict.main(["-o", "out.nii.gz", "--ckpt", "x.ckpt"])
    assert done.value.code == 2 and "required: -i/--input" in capsys.readouterr().err


def _nifti(path: Path) -> Path:
    return save_nifti(path, np.arange(24, dtype=np.float32).reshape(2, 3, 4), np.eye(4))


def test_a_folder_in_gives_a_folder_out_with_the_same_names(tmp_path: Path) -> None:
    for name in ("b.nii.gz", "a.nii"):
        _nifti(tmp_path / "in" / name)
    (tmp_path / "in" / "notes.txt").write_text("not a case")
    cases = list_cases(tmp_path / "in", tmp_path / "out")
    assert [(c.name, c.target) for c in cases] == [("a", tmp_path / "out" / "a.nii"),
                                                   ("b", tmp_path / "out" / "b.nii.gz")]
    one = list_cases(tmp_path / "in" / "a.nii", tmp_path / "x.nii.gz")
    assert [(c.name, c.target) for c in one] == [("a", tmp_path / "x.nii.gz")]  # a file in: the file out


def test_dicom_series_are_cases_beside_nifti_files(tmp_path: Path) -> None:
    hu = np.full((4, 5, 3), 40.0)
    write_ct_series(tmp_path / "in" / "patient7" / "study" / "series", hu, np.diag([0.8, 0.8, 2.5, 1.0]),
                    patient_id="p7", study_uid="1.2.3", series_uid="1.2.3.4")
    _nifti(tmp_path / "in" / "scan.nii.gz")
    cases = list_cases(tmp_path / "in", tmp_path / "out", dicom=True)
    assert [(c.name, c.is_dicom, c.target.name) for c in cases] == [("patient7", True, "patient7.nii.gz"),
                                                                    ("scan", False, "scan.nii.gz")]
    series = tmp_path / "in" / "patient7" / "study" / "series"
    assert list_cases(series, tmp_path / "p7.nii.gz", dicom=True)[0].is_dicom  # one series in: one file out
    with pytest.raises(DataError, match="no .nii.gz / .nii files found"):
        list_cases(tmp_path / "in" / "patient7", tmp_path / "out")  # without dicom=True a series is no case


def test_bad_inputs_and_outputs_name_the_path(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="missing.nii.gz: not found"):
        list_cases(tmp_path / "missing.nii.gz", tmp_path / "out.nii.gz")
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match="empty: no .nii.gz / .nii files"):
        list_cases(tmp_path / "empty", tmp_path / "out")
    _nifti(tmp_path / "in" / "a.nii.gz")
    (tmp_path / "taken").write_text("")
    with pytest.raises(DataError, match="taken: is a file"):
        list_cases(tmp_path / "in", tmp_path / "taken")


def test_a_renamed_flag_still_works_and_names_the_new_one(capsys) -> None:
    parser = predict_parser("test", "in", "out", "ckpt")
    rename_flag(parser, "--out", "--output")
    rename_flag(parser, "--bf16", "--precision bf16", value="bf16")
    args = parse_predict_args(parser, ["-i", "a", "--out", "b", "--ckpt", "c", "--bf16", "--device", "cpu"])
    assert (args.output, args.precision, args.device) == ("b", "bf16", "cpu")
    err = capsys.readouterr().err
    assert "note: --out is now --output" in err and "note: --bf16 is now --precision bf16" in err
    assert "--out " not in parser.format_help() and "--bf16" not in parser.format_help()  # hidden
    args = parse_predict_args(parser, ["-i", "a", "-o", "b", "--ckpt", "c", "--precision", "32"])
    assert args.precision == "32" and args.device in ("cpu", "cuda") and capsys.readouterr().err == ""


def test_the_eval_report_has_cases_mean_protocol_and_its_own_blocks(tmp_path: Path) -> None:
    cases = {"b": {"dice": 0.5, "hd95": math.inf}, "a": {"dice": 0.7, "hd95": 2.0}}
    report = write_eval_report(tmp_path / "eval.json", cases, {"name": "test protocol", "paper": {"dice": 0.8}},
                               pooled={"dice": 0.6})
    assert check_eval_report(tmp_path / "eval.json") == check_eval_report(report)
    assert report["mean"] == {"dice": pytest.approx(0.6), "hd95": None} and report["pooled"] == {"dice": 0.6}
    with pytest.raises(ValueError, match="'name' and 'paper'"):
        eval_report(cases, {"name": "no paper figures key"})
    with pytest.raises(ValueError, match="may not be named"):
        eval_report(cases, {"name": "x", "paper": None}, mean={})
    with pytest.raises(DataError, match="no case was scored"):
        write_eval_report(tmp_path / "none.json", {}, {"name": "x", "paper": None})
    assert not (tmp_path / "none.json").exists()


@pytest.mark.parametrize("project", ["spin", "rstn"])
def test_validation_scores_a_case_as_eval_does(project: str) -> None:
    """The slice-fed metric of the LightningModule, given the project's score_counts, gives score_case's values."""
    import torch

    from common.metrics import SegmentationVolumeMetric

    metrics = importlib.import_module(f"projects.{project}.metrics")
    metric = SegmentationVolumeMetric(score_counts=metrics.score_counts)
    rng = np.random.default_rng(0)
    volumes = {"hit": (rng.random((5, 6, 7)) > 0.6, rng.random((5, 6, 7)) > 0.7),
               "both_empty": (np.zeros((5, 6, 7), bool), np.zeros((5, 6, 7), bool))}
    for case, (pred, ref) in volumes.items():
        for start in (0, 3):  # two batches of slices per case
            index = torch.arange(start, min(start + 3, 5))
            metric.update(torch.from_numpy(pred[index.numpy()]), torch.from_numpy(ref[index.numpy()]),
                          [case] * len(index), index)
    per_case = metric.compute_per_case()
    for case, (pred, ref) in volumes.items():
        assert per_case[case] == pytest.approx(metrics.score_case(pred, ref))
    assert per_case["both_empty"]["dice"] == 0.0  # the papers' rule, not the library default of 1


def test_a_nested_series_is_one_case_when_the_output_names_a_file(tmp_path: Path) -> None:
    write_ct_series(tmp_path / "patient7" / "study" / "series", np.full((4, 5, 3), 40.0),
                    np.diag([0.8, 0.8, 2.5, 1.0]), patient_id="p7", study_uid="1.2.3", series_uid="1.2.3.4")
    one = list_cases(tmp_path / "patient7", tmp_path / "p7.nii.gz", dicom=True)
    assert [(c.name, c.source, c.target) for c in one] == [("patient7", tmp_path / "patient7", tmp_path / "p7.nii.gz")]
    folder = list_cases(tmp_path / "patient7", tmp_path / "out", dicom=True)
    assert [(c.name, c.target) for c in folder] == [("study", tmp_path / "out" / "study.nii.gz")]
