"""nets.summary: the papers' tables regenerated; shapes, activations, parameters, multiply-adds."""

import pytest

import nets
from nets import summary


@pytest.fixture(scope="module")
def vgg16_rows():
  return {row.name: row for row in summary.layer_table(nets.create("vgg16"), (224, 224, 3))}


def test_vgg16_table_has_the_seeds_shapes_activations_and_parameters(vgg16_rows):
  expected = {  # output, activations, parameters (the seed leaves biases out; these are in)
    "input": ((224, 224, 3), 150_528, 0),
    "conv1_1": ((224, 224, 64), 3_211_264, 3 * 3 * 3 * 64 + 64),
    "pool1": ((112, 112, 64), 802_816, 0),
    "conv3_3": ((56, 56, 256), 802_816, 3 * 3 * 256 * 256 + 256),
    "pool5": ((7, 7, 512), 25_088, 0),
    "fc6": ((4096,), 4096, 7 * 7 * 512 * 4096 + 4096),
    "fc8": ((1000,), 1000, 4096 * 1000 + 1000),
  }
  for name, (shape, activations, params) in expected.items():
    row = vgg16_rows[name]
    assert (row.output_shape, row.activations, row.params) == (shape, activations, params), name


def test_vgg16_has_138m_parameters_most_in_the_first_fully_connected_layer(vgg16_rows):
  total = sum(row.params for row in vgg16_rows.values())
  assert total == 138_357_544
  assert max(vgg16_rows.values(), key=lambda row: row.params).name == "fc6"
  assert vgg16_rows["fc6"].params / total > 0.74


def test_vgg16_activations_total_15_2m_not_the_seeds_24m(vgg16_rows):
  """The seed's rows are right but its total ("24M x 4 bytes ~= 93MB / image") is not their sum."""
  activations = sum(row.activations for row in vgg16_rows.values())
  assert activations == 15_237_608
  assert sum(row.activation_bytes for row in vgg16_rows.values()) == 4 * 15_237_608  # 61 MB in float32


# The papers' multiply-adds: He et al. 2015 Table 1 and section 4.1 (VGG), Szegedy et al. 2015.
PUBLISHED_MULTIPLY_ADDS = [
  ("resnet18", {}, 1.8e9),
  ("resnet34", {}, 3.6e9),
  ("resnet50", {}, 3.8e9),
  ("resnet101", {}, 7.6e9),
  ("resnet152", {}, 11.3e9),
  ("resnet50", {}, 3.86e9),
  ("resnet50", {"stride_in_3x3": True}, 4.09e9),
  ("resnet152", {"stride_in_3x3": True}, 11.51e9),
  ("vgg16", {}, 15.3e9),
  ("vgg19", {}, 19.6e9),
]


@pytest.mark.parametrize(
  "name,kwargs,published",
  PUBLISHED_MULTIPLY_ADDS,
  ids=[f"{n}{'-v1.5' if kw else ''}-{p:.3g}" for n, kw, p in PUBLISHED_MULTIPLY_ADDS],
)
def test_multiply_adds_within_5_percent_of_published(name, kwargs, published):
  assert summary.multiply_adds(nets.create(name, **kwargs), (224, 224, 3)) == pytest.approx(published, rel=0.05)


@pytest.fixture(scope="module")
def googlenet_rows():
  model = nets.create("googlenet", aux_heads=False)
  return {row.name: row for row in summary.layer_table(model, (224, 224, 3))}


def test_googlenet_params_column_matches_the_papers_table(googlenet_rows):
  """Table 1's params column (K = 1024, biases left out), within 2%: all rows but three
  whose printed numbers do not follow from the table's own filter counts."""
  paper = {
    "inception_3a": 159,
    "inception_3b": 380,
    "inception_4a": 364,
    "inception_4b": 437,
    "inception_4d": 580,
    "inception_4e": 840,
    "inception_5b": 1388,
    "linear": 1000,
  }
  not_from_the_widths = {"conv1": 2.7, "inception_4c": 463, "inception_5a": 1072}
  rows = googlenet_rows
  for name, thousands in paper.items():
    assert rows[name].params / 1024 == pytest.approx(thousands, rel=0.02), name
  assert (rows["conv2_reduce"].params + rows["conv2"].params) / 1024 == pytest.approx(112, rel=0.02)
  for name, thousands in not_from_the_widths.items():
    assert rows[name].params / 1024 != pytest.approx(thousands, rel=0.02), name


def test_googlenet_ops_column_and_total_match_the_papers_table(googlenet_rows):
  """Table 1's ops column (millions of multiply-adds) within 6%, but conv1: the paper's 34M
  is not a 7x7x3x64 conv at 112x112 (118M), so the true total is 1.58G, not 1.5G."""
  paper = {
    "conv2": 360,
    "inception_3a": 128,
    "inception_3b": 304,
    "inception_4a": 73,
    "inception_4b": 88,
    "inception_4c": 100,
    "inception_4d": 119,
    "inception_4e": 170,
    "inception_5a": 54,
    "inception_5b": 71,
    "linear": 1,
  }
  rows = googlenet_rows
  ops = {name: row.multiply_adds / 1e6 for name, row in rows.items()}
  ops["conv2"] += ops.pop("conv2_reduce")
  for name, millions in paper.items():
    assert ops[name] == pytest.approx(millions, rel=0.06), name
  assert ops["conv1"] == 112 * 112 * 7 * 7 * 3 * 64 / 1e6
  assert sum(ops.values()) == pytest.approx(1_500 + ops["conv1"] - 34, rel=0.01)


def test_rows_add_up_to_the_nets_totals():
  model = nets.create("resnet18")
  rows = summary.layer_table(model, (224, 224, 3))
  assert [row.name for row in rows[:3]] == ["input", "conv1", "pool1"] and rows[-1].name == "fc"
  assert sum(row.params for row in rows) == 11_689_512
  assert sum(row.multiply_adds for row in rows) == summary.multiply_adds(model, (224, 224, 3))


def test_xla_cost_analysis_agrees_with_the_multiply_adds_up_to_padding_and_element_wise_work():
  model = nets.create("resnet50")
  macs, flops = summary.multiply_adds(model, (224, 224, 3)), summary.xla_flops(model, (224, 224, 3))
  assert 0.9 < flops / (2 * macs) < 1.0  # padding left out outweighs batch norm, ReLU, pooling


def test_command_prints_the_table_with_totals(capsys):
  summary.main(["lenet5", "sparse_c3=True", "trainable_pooling=True", "rbf_output=True"])
  out = capsys.readouterr().out
  assert "lenet5 at 32x32x1, 10 classes" in out and "C3" in out
  assert "Parameters: 60,840" in out and "Activations: 9,118 per image" in out
  # C1 6x28x28 outputs x 25 taps; sparse C3 10x10 x 60 connections x 25 taps; C5, F6, and no RBF term.
  assert f"Multiply-adds: {117_600 + 150_000 + 48_000 + 10_080:,}" in out


def test_options_are_parsed_as_python_literals_or_strings():
  assert summary.parse_options(["batch_norm=True", "depth=110", "shortcut=B"]) == {
    "batch_norm": True,
    "depth": 110,
    "shortcut": "B",
  }
  with pytest.raises(ValueError, match="key=value"):
    summary.parse_options(["batch_norm"])


def test_the_command_without_a_net_lists_the_nets_and_how_to_call_it(capsys):
  summary.main([])
  out = capsys.readouterr().out
  assert "The nets: alexnet, cifar_resnet, googlenet" in out and "python -m nets.summary vgg16" in out


def test_an_unknown_net_is_one_line_naming_the_nets(capsys):
  with pytest.raises(SystemExit) as exit_info:
    summary.main(["resnet"])
  assert exit_info.value.code == 2 and "unknown net 'resnet'; give one of alexnet" in capsys.readouterr().err
