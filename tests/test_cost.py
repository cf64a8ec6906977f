"""The analytic cost model against the papers' tables and against what the model executes."""

import json

import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

from mobilenet import create_model
from mobilenet.cost import cost, separable_ratio
from mobilenet.paper import PAPER_ROWS, TABLE2_SHARES, TABLE2_TOLERANCE, PaperRow, matches


def counted_macs(model: torch.nn.Module, resolution: int) -> int:
    """Multiply-accumulates that PyTorch's FLOP counter sees the model run (MACs = FLOPs / 2). Run on
    the meta device (the model is moved there): the same operators on the same shapes, which is all
    the counter reads, without the arithmetic (a 224-pixel full-convolution V1 at width 1.4 took seconds)."""
    model.eval().to("meta")
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        model(torch.randn(1, 3, resolution, resolution, device="meta"))
    assert counter.get_total_flops() % 2 == 0
    return counter.get_total_flops() // 2


@pytest.mark.parametrize("row", PAPER_ROWS, ids=lambda r: f"{r.table}-{r.model}-{r.width_mult}-{r.resolution}")
def test_reproduces_the_papers_tables(row: PaperRow):
    report = cost(row.model, row.resolution, width_mult=row.width_mult)
    assert abs(report.macs / 1e6 - row.macs_m) <= row.macs_tolerance * row.macs_m
    if row.params_m is not None:
        printed = int(report.params / 1e5) / 10 if row.truncated_params else round(report.params / 1e6, 1)
        assert printed == row.params_m or abs(report.params / 1e6 - row.params_m) <= row.params_tolerance * row.params_m


def test_paper_match_is_strict():
    row = PAPER_ROWS[0]  # V1 1.0-224: 569 M mult-adds, 4.2 M parameters
    assert matches(row, 569_000_000, 4_231_976)
    assert not matches(row, int(569e6 * 1.006), 4_231_976)
    assert not matches(row, 569_000_000, 4_300_000)


def test_table2_shares_by_layer_type():
    shares = cost("mobilenet_v1", 224).share()
    for kind, (paper_macs, paper_params) in TABLE2_SHARES.items():
        assert shares[kind][0] == pytest.approx(paper_macs, abs=TABLE2_TOLERANCE)
        assert shares[kind][1] == pytest.approx(paper_params, abs=TABLE2_TOLERANCE)
    assert sum(m for m, _ in shares.values()) == pytest.approx(100)


@pytest.mark.parametrize("name", ["mobilenet_v1", "mobilenet_v2", "conv_mobilenet_v1"])
@pytest.mark.parametrize("width", [1.0, 0.75, 0.5, 0.25, 1.4])
@pytest.mark.parametrize("resolution,small_input", [(224, False), (128, False), (100, False), (32, True)])
def test_analytic_macs_equal_counted_macs(name, width, resolution, small_input):
    kwargs = dict(width_mult=width, num_classes=10, small_input=small_input)
    with torch.device("meta"):  # shapes and counts only: no initialisation to pay for
        model = create_model(name, **kwargs)
    report = cost(name, resolution, **kwargs)
    assert report.macs == counted_macs(model, resolution)
    assert report.params == sum(p.numel() for p in model.parameters())
    assert cost(model, resolution).macs == report.macs  # a built model costs the same as its name


@pytest.mark.parametrize("name", ["mobilenet_v3_large", "mobilenet_v3_small", "mobilenet_v4_conv_small",
                                  "mobilenet_v4_conv_medium"])
@pytest.mark.parametrize("width,resolution,small_input", [(1.0, 224, False), (0.75, 224, False), (0.5, 28, True)])
def test_v3_and_v4_cost_what_they_run(name, width, resolution, small_input):
    """V3's squeeze-and-excitation counted as its two fully connected layers on the pooled vector,
    hard-swish, hard-sigmoid and the SE scaling free: what PyTorch's FLOP counter sees it run."""
    kwargs = dict(width_mult=width, num_classes=10, small_input=small_input)
    report = cost(name, resolution, **kwargs)
    with torch.device("meta"):  # shapes and counts only: no initialisation to pay for
        model = create_model(name, **kwargs)
    assert report.macs == counted_macs(model, resolution)
    assert report.params == sum(p.numel() for p in model.parameters())
    se = [layer for layer in report.layers if layer.kind == "se"]
    assert len(se) == {"mobilenet_v3_large": 8, "mobilenet_v3_small": 9}.get(name, 0)
    assert all(layer.macs > 0 for layer in se)


@pytest.mark.parametrize("width,resolution,small_input", [(1.0, 224, False), (0.5, 28, True)])
def test_the_shallow_variant_costs_what_it_runs(width, resolution, small_input):
    """Table 5's shallow V1 (its 307 M and 2.9 M at 224 are in PAPER_ROWS): the analytic count is
    what PyTorch's FLOP counter sees it run, at the paper's size and at Fashion-MNIST's."""
    kwargs = dict(width_mult=width, num_classes=10, small_input=small_input)
    report = cost("shallow_mobilenet_v1", resolution, **kwargs)
    model = create_model("shallow_mobilenet_v1", **kwargs)
    assert report.macs == counted_macs(model, resolution)
    assert report.params == sum(p.numel() for p in model.parameters())


@pytest.mark.parametrize("name", ["mobilenet_v1", "mobilenet_v2"])
@pytest.mark.parametrize("resolution", [224, 193])
def test_tf_same_padding_costs_what_it_runs(name, resolution):
    kwargs = dict(width_mult=0.5, padding="tf_same", activation="relu6", bn_eps=1e-3)
    with torch.device("meta"):  # shapes and counts only: no initialisation to pay for
        model = create_model(name, **kwargs)
    report = cost(name, resolution, **kwargs)
    assert report.macs == counted_macs(model, resolution)
    assert report.macs == cost(name, resolution, width_mult=0.5).macs  # same outputs sizes as symmetric padding


def test_per_layer_rows_follow_table_1():
    report = cost("mobilenet_v1", 224)
    first = report.layers[:3]
    assert [r.operator for r in first] == ["conv 3x3/2", "dw 3x3/1", "conv 1x1/1"]
    assert first[0].input_shape == (3, 224, 224) and first[0].output_shape == (32, 112, 112)
    # paper formulas, by hand: standard D_K^2 M N D_F^2, depthwise D_K^2 M D_F^2, pointwise M N D_F^2
    assert first[0].macs == 3 * 3 * 3 * 32 * 112 * 112
    assert first[1].macs == 3 * 3 * 32 * 112 * 112
    assert first[2].macs == 32 * 64 * 112 * 112
    assert report.layers[-2].operator == "avgpool" and report.layers[-2].output_shape == (1024, 1, 1)
    assert report.layers[-1].macs == 1024 * 1000 and report.layers[-1].params == 1024 * 1000 + 1000
    assert sum(r.kind == "depthwise" for r in report.layers) == 13


@pytest.mark.parametrize("name", ["mobilenet_v1", "mobilenet_v2"])
def test_separable_saving_is_1_over_n_plus_1_over_dk2(name):
    rows = [r for r in cost(name, 224).layers if r.vs_standard is not None]
    assert len(rows) == (13 if name == "mobilenet_v1" else 17)
    for row in rows:
        assert row.vs_standard == pytest.approx(separable_ratio(row.output_shape[0], 3))


def test_cost_scales_with_resolution_squared():
    full, half = cost("mobilenet_v1", 256), cost("mobilenet_v1", 128)  # both divide by the stride 32
    convs = lambda r: sum(l.macs for l in r.layers if l.kind != "fc")  # noqa: E731
    assert convs(full) == 4 * convs(half)
    assert full.params == half.params


@pytest.mark.parametrize("resolution,message", [(0, "whole number of pixels"), (-1, "whole number of pixels"),
                                                 (1.5, "whole number of pixels"), (5000, "from 1 to 4096"),
                                                 (31, "at least 32")])
def test_bad_resolution(resolution, message):
    with pytest.raises(ValueError, match=message):
        cost("mobilenet_v1", resolution)


def test_small_input_allows_smaller_resolution():
    assert cost("mobilenet_v2", 8, small_input=True).macs > 0
    with pytest.raises(ValueError, match="at least 8"):
        cost("mobilenet_v2", 7, small_input=True)


def test_json_shape():
    data = json.loads(json.dumps(cost("mobilenet_v2", 160, width_mult=0.5).to_dict()))
    assert {"model", "width_mult", "resolution", "macs", "params", "layers"} <= set(data)
    assert isinstance(data["macs"], int) and isinstance(data["params"], int)
    assert data["macs"] == sum(layer["macs"] for layer in data["layers"])
    for layer in data["layers"]:
        assert {"name", "operator", "input_shape", "output_shape", "macs", "params"} <= set(layer)
