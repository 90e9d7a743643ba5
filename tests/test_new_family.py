"""A family added from outside the package, in this module alone (one Family, one registry entry,
one spec), goes through every stage: list, train, export, parity, analyze and recommend."""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass

import pytest
from typer.testing import CliRunner

from toolkit import families, specs
from toolkit.cli.app import app
from toolkit.families.base import Family
from toolkit.specs.recipe import Recipe

runner = CliRunner()
NAME = "probe_net"
LIMIT = "2000"


@dataclass(frozen=True)
class ProbeArch:
    filters: int = 8
    units: int = 32


def forward(arch: ProbeArch, net):
    x = net.conv(net.input(), arch.filters, 3, stride=2, activation="relu", name="probe_conv")
    x = net.maxpool(x, 2, stride=2, name="probe_pool")
    x = net.dense(net.flatten(x, name="flatten"), arch.units, activation="relu", name="embedding")
    return net.classifier(x)


def check(arch: ProbeArch):
    if arch.filters < 1:
        yield f"filters must be a positive width, got {arch.filters}"


PROBE = Family(name="Probe", arch=ProbeArch, forward=forward, check=check,
               feature_maps=lambda arch: ["probe_conv", "probe_pool"],
               describe=lambda arch: f"conv {arch.filters}/2, pool, dense {arch.units}",
               description="a throwaway family registered by a test")


@pytest.fixture(scope="module")
def probe_root(tmp_path_factory):
    families.register(PROBE)
    recipe = Recipe(epochs=2, batch_size=64, learning_rate=3e-3, selection="best")
    specs.register_spec(specs.Spec(name=NAME, family="Probe", arch=ProbeArch(), recipe=recipe))
    try:
        yield tmp_path_factory.mktemp("probe")
    finally:
        specs.unregister_spec(NAME)
        families.unregister("Probe")


def _run(*args: str):
    return runner.invoke(app, list(args))


@pytest.mark.slow
def test_a_registered_family_goes_through_every_stage(probe_root, dataset):
    root = str(probe_root)
    listed = _run("list", "--family", "probe")
    assert listed.exit_code == 0 and NAME in listed.output and "new" in listed.output
    rows = {r["name"]: r for r in json.loads(_run("list", "--json").output)}
    assert rows[NAME]["family"] == "Probe" and rows[NAME]["params"] == specs.get_spec(NAME).param_count()

    trained = _run("train", "--exp", NAME, "--limit-train", LIMIT, "--artifacts", root)
    assert trained.exit_code == 0, trained.output
    metrics = json.loads((probe_root / NAME / "metrics.json").read_text())
    assert metrics["params"] == specs.get_spec(NAME).param_count() and metrics["test_accuracy"] > 0.5

    # Both formats, float and the microcontroller build (every precision is covered on a seed spec
    # in test_export; converting them all again here would only repeat it).
    exported = _run("export", "--exp", NAME, "--format", "all", "--precision", "fp32,int8io",
                    "--artifacts", root)
    entries = {e["key"]: e for e in json.loads((probe_root / NAME / "exports.json").read_text())["exports"]}
    # (--format all includes the C source, made from the int8io file)
    assert set(entries) == {"onnx-fp32", "tflite-fp32", "tflite-int8io", "tflm-c"}, exported.output
    assert all(e["status"] == "exported" for e in entries.values()), exported.output
    assert entries["onnx-fp32"]["parity"]["status"] == entries["tflite-fp32"]["parity"]["status"] == "pass"
    assert entries["tflite-int8io"]["arena_bytes"] > 0
    rows = json.loads((probe_root / NAME / "parity.json").read_text())["exports"]
    failed = sorted(r["row"] for r in rows if not r["passed"])
    assert exported.exit_code == (5 if failed else 0), exported.output

    rechecked = _run("parity", "--exp", NAME, "--artifacts", root)
    assert rechecked.exit_code == exported.exit_code, rechecked.output

    analyzed = _run("analyze", "--exp", NAME, "--tsne-samples", "100", "--artifacts", root)
    assert analyzed.exit_code == 0, analyzed.output
    summary = json.loads((probe_root / NAME / "analysis" / "analysis.json").read_text())
    assert [layer["name"] for layer in summary["sample"]["layers"]] == ["probe_conv", "probe_pool"]
    assert (probe_root / NAME / "analysis" / "feature_maps.png").is_file()

    recommended = _run("recommend", "--exp", NAME, "--index", "0", "-k", "3", "--catalog-limit", "3000",
                       "--artifacts", root)
    assert recommended.exit_code == 0, recommended.output
    evaluated = _run("recommend", "--exp", NAME, "--evaluate", "--catalog-limit", "3000", "--artifacts", root)
    assert evaluated.exit_code == 0, evaluated.output
    assert "precision@5" in evaluated.output.replace("P@5", "precision@5")


def test_registration_is_checked():
    from toolkit.core.errors import UsageError

    with pytest.raises(UsageError, match="already registered"):
        families.register(families.get_family("CNN"))
    other = families.register(dataclasses.replace(PROBE, name="ProbeCheck"))
    try:
        with pytest.raises(UsageError, match="filters must be a positive width"):
            specs.Spec(name="bad_probe", family="ProbeCheck", arch=ProbeArch(filters=0))
    finally:
        families.unregister(other.name)
    with pytest.raises(UsageError, match="unknown model family 'ProbeCheck'"):
        families.get_family("ProbeCheck")
