"""The command line, run as a user would (in this process, and end to end in a new one)."""

import json

import pytest


def test_models_lists_the_registry(cli):
    out = cli("models")
    assert out.returncode == 0
    from mobilenet import list_models

    assert [line.split()[0] for line in out.stdout.splitlines()] == list_models()
    assert {"mobilenet_v1", "mobilenet_v2", "mobilenet_v3_large", "mobilenet_v4_conv_small"} <= set(list_models())


def test_cost_table(cli):
    out = cli("cost", "mobilenet_v1", "--width", "0.5", "--resolution", "160")
    assert out.returncode == 0, out.stderr
    assert "features.13.pointwise" in out.stdout and "total" in out.stdout


def test_cost_json(cli):
    out = cli("cost", "mobilenet_v2", "--width", "1.4", "--resolution", "224", "--json")
    assert out.returncode == 0, out.stderr
    data = json.loads(out.stdout)
    assert data["model"] == "mobilenet_v2" and data["width_mult"] == 1.4 and data["resolution"] == 224
    assert data["params"] == 6_108_776 and abs(data["macs"] / 1e6 - 585) < 0.01 * 585
    assert data["layers"][0]["input_shape"] == [3, 224, 224]


def test_cost_small_input_and_classes(cli):
    out = cli("cost", "mobilenet_v1", "--num-classes", "10", "--small-input", "--resolution", "32", "--json")
    data = json.loads(out.stdout)
    assert data["layers"][-1]["output_shape"] == [10] and data["small_input"] is True


def test_tables_all_match(cli):
    out = cli("tables")
    assert out.returncode == 0
    from mobilenet.paper import PAPER_ROWS, TABLE2_SHARES

    for table in ("V1 Table 2", "V1 Table 4", "V1 Table 5", "V1 Table 6", "V1 Table 7", "V2 Table 4", "V3 Table 3",
                  "V4 paper"):
        assert table in out.stdout
    assert " NO" not in out.stdout and out.stdout.count("| yes") == len(PAPER_ROWS) + len(TABLE2_SHARES) == 25


@pytest.mark.parametrize("args,message", [
    (["cost", "resnet50"], "unknown model 'resnet50'"),
    (["cost", "mobilenet_v1", "--width", "0"], "width"),
    (["cost", "mobilenet_v1", "--width", "5"], "(0, 4]"),
    (["cost", "mobilenet_v1", "--width", "nan"], "width"),
    (["cost", "mobilenet_v1", "--width", "abc"], "width"),
    (["cost", "mobilenet_v1", "--resolution", "16"], "at least 32"),
    (["cost", "mobilenet_v1", "--resolution", "0"], "positive integer"),
    (["cost", "mobilenet_v1", "--resolution", "big"], "positive integer"),
    (["cost", "mobilenet_v1", "--num-classes", "0"], "num_classes"),
    (["frobnicate"], "invalid choice"),
    ([], "required"),
])
def test_bad_input_exits_2_with_one_line(cli, args, message):
    out = cli(*args)
    assert out.returncode == 2
    assert out.stdout == ""
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1 and message in lines[0] and "Traceback" not in out.stderr


def test_the_installed_command_end_to_end(cli_process):
    """A new interpreter through `python -m mobilenet`: the entry point, a result and a refusal."""
    out = cli_process("cost", "mobilenet_v1", "--json")
    assert out.returncode == 0 and json.loads(out.stdout)["params"] == 4_231_976, out.stderr
    bad = cli_process("cost", "mobilenet_v1", "--width", "0")
    assert bad.returncode == 2 and len(bad.stderr.strip().splitlines()) == 1 and "Traceback" not in bad.stderr
