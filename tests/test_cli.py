"""One command-line convention (underscores, old spellings kept as aliases) and a package that imports no script."""

import ast
from pathlib import Path

from ifam_interventions.cli import build_parser
from ifam_train.arguments import DataArguments, parse_args

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("modeling_ifam", "ifam_data", "ifam_metrics", "ifam_train", "ifam_interventions")


def test_training_options_accept_underscores_and_hyphens():
    new = parse_args(["--synthetic_regime", "ood", "--synthetic_num_train", "10", "--image_size", "28",
                      "--dataset_name", "synthetic", "--num_parts", "3", "--output_dir", "out"])
    old = parse_args(["--synthetic-regime", "ood", "--num_train", "10", "--image-size", "28",
                      "--dataset-name", "synthetic", "--num_parts", "3", "--output_dir", "out"])
    assert new[0] == old[0] == DataArguments(synthetic_regime="ood", synthetic_num_train=10, image_size=28)
    assert vars(new[1]) == vars(old[1]) and new[1].num_parts == 3


def test_intervention_options_share_the_data_arguments():
    parser = build_parser("test")
    data_args, args = parser.parse_args_into_dataclasses(
        ["--model-name-or-path", "folder", "--regime", "ood", "--per-device-eval-batch-size", "4"])
    assert data_args == DataArguments(synthetic_regime="ood")
    assert (args.model_name_or_path, args.per_device_eval_batch_size, args.split) == ("folder", 4, "test")


def test_no_library_imports_a_script_and_nothing_edits_sys_path():
    scripts = {"train", "push_to_hub", "synthetic", "probe_features", "pretrain_mim", "throughput"}
    for path in [p for package in PACKAGES for p in (ROOT / package).rglob("*.py")]:
        tree = ast.parse(path.read_text())
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                names = {alias.name for alias in node.names}
            elif isinstance(node, ast.ImportFrom) and node.level == 0:
                names = {node.module}
            else:
                continue
            assert not names & scripts, f"{path.relative_to(ROOT)} imports the script(s) {names & scripts}"
    for path in ROOT.glob("**/*.py"):
        if ".git" not in path.parts and path != Path(__file__).resolve():
            assert "sys.path" not in path.read_text(), f"{path.relative_to(ROOT)} edits sys.path"
