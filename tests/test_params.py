from pathlib import Path

import pytest

from flowerpipe.params import (
    OFFICIAL_SHA256,
    OFFICIAL_URL,
    PRETRAINED_NETWORK,
    SCRATCH_NETWORK,
    ParamsError,
    load,
    parse,
)

ROOT = Path(__file__).resolve().parents[1]


def test_project_params_are_valid():
    p = load(ROOT / "params.yaml")
    assert p.model.arch == "xception" and p.model.image_size >= 71  # (the defaults: test_params_yaml_and_params_py...)
    assert p.data.expected_sha256() == OFFICIAL_SHA256


def test_weights_none_means_the_scratch_recipes_network_unless_a_key_says_otherwise():
    def network(**model):
        m = parse({"model": model}).model
        return m.image_size, m.width, m.middle_blocks

    keys = ("image_size", "width", "middle_blocks")
    pretrained, scratch = (tuple(n[k] for k in keys) for n in (PRETRAINED_NETWORK, SCRATCH_NETWORK))
    assert pretrained != scratch
    assert network() == pretrained == network(image_size="auto", width="auto", middle_blocks="auto")
    assert network(weights="none") == scratch  # docs/training.md: "From scratch in 30 minutes on 2 cores"
    assert network(weights="none", image_size=96, width=1.0) == (96, 1.0, scratch[2])  # each key overrides alone
    assert network(weights="none", arch="mobilenet_v2") == pretrained  # width and depth scale Xception only


@pytest.mark.parametrize("raw, key, words", [
    ({"train": {"epochs": -1}}, "train.epochs", "greater than or equal to 0"),
    ({"train": {"epoks": 3}}, "train.epoks", "unknown key"),
    ({"split": {"val": 0.6, "test": 0.5}}, "split", "below 1"),
    ({"model": {"image_size": 64}}, "model", "at least 71"),
    ({"model": {"arch": "resnet9000"}}, "model.arch", "expected one of"),
    ({"train": {"batch_size": "many"}}, "train.batch_size", "'many'"),
    ({"data": {"sha256": "abc"}}, "data.sha256", "64-character"),
    ({"train": {"strategy": "tpu"}}, "train.strategy", "'tpu'"),
    ({"train": {"scratch_minutes": -5}}, "train.scratch_minutes", "greater than or equal to 0"),
    ({"train": {"scratch_crop_area": 0}}, "train.scratch_crop_area", "greater than 0"),
    ({"train": {"scratch_progressive": 0.1}}, "train.scratch_progressive", "greater than or equal to 0.25"),
    ({"model": {"width": "wide"}}, "model.width", "'wide'"),
    ({"train": {"learning_rate": float("inf")}}, "train.learning_rate", "finite number"),
    ({"split": {"seed": -1}}, "split.seed", "greater than or equal to 0"),  # numpy refuses it (a traceback before)
    ({"train": {"seed": 2**32}}, "train.seed", "less than or equal to 4294967295"),
    ({"benchmark": {"batch_sizes": []}}, "benchmark.batch_sizes", "at least 1 item"),
    ({"serve": {"concurrency": []}}, "serve.concurrency", "at least 1 item"),
    ({"trt": {"backend": "onnx"}}, "trt", "renamed tensorrt"),  # a params.yaml from before the rename
])
def test_bad_params_name_the_key(raw, key, words):
    with pytest.raises(ParamsError) as err:
        parse(raw)
    line = str(err.value)
    assert len(line.splitlines()) == 1
    assert line.startswith(f"params.yaml: {key}") and words in line


@pytest.mark.parametrize("raw, key, words", [
    ({"trian": {}}, "trian", "unknown key"),  # a top-level typo: no stage and no format reads it
    ({"tflite": {"variants": ["int9"]}}, "tflite.variants.0", "'int9'"),  # a format's own section
    ({"tensorrt": {"precision": ["fp16"]}}, "tensorrt.precision", "unknown key"),
    ({"headline": {"formats": ["keras"]}}, "headline.formats", "unknown or reference format 'keras'"),
    ({"infer": {"format": "onnx-int4"}}, "infer.format", "unknown format 'onnx-int4'"),
])
def test_format_sections_and_names_are_checked_by_the_registry_and_at_stage_start(raw, key, words, tmp_path):
    from flowerpipe.formats.registry import check
    from flowerpipe.pipeline.stage import stage_params

    with pytest.raises(ParamsError) as err:
        check(parse(raw))
    line = str(err.value)
    assert len(line.splitlines()) == 1 and line.startswith(f"params.yaml: {key}") and words in line, line
    if key == "trian":  # and the stage runner refuses a section no stage of dvc.yaml reads, before any work
        import yaml

        params = tmp_path / "params.yaml"
        params.write_text(yaml.safe_dump(raw))
        with pytest.raises(ParamsError, match=r"params.yaml: trian: unknown key$"):
            stage_params("download", params, ROOT / "dvc.yaml")


def test_every_bad_key_is_reported(tmp_path):
    f = tmp_path / "params.yaml"
    f.write_text("train: {epochs: -1, batch_size: 0}\n")
    with pytest.raises(ParamsError) as err:
        load(f)
    assert len(str(err.value).splitlines()) == 2


def test_sha256_auto_only_for_the_official_url():
    assert parse({"data": {"url": OFFICIAL_URL}}).data.expected_sha256() == OFFICIAL_SHA256
    assert parse({"data": {"url": "/tmp/x.tgz"}}).data.expected_sha256() == ""
    assert parse({"data": {"url": "/tmp/x.tgz", "sha256": "A" * 64}}).data.expected_sha256() == "a" * 64


def test_not_yaml(tmp_path):
    f = tmp_path / "params.yaml"
    f.write_text("train:\n  epochs: [unclosed\n")
    with pytest.raises(ParamsError) as err:
        load(f)
    assert str(err.value) == (f"{f}: not valid YAML at line 3, column 1: expected ',' or ']', but got "
                              "'<stream end>'")


def test_a_stage_reads_only_what_dvc_yaml_declares(tmp_path):
    from flowerpipe.pipeline.guard import UndeclaredParam, declared
    from flowerpipe.pipeline.stage import stage_params

    dvc_yaml = tmp_path / "dvc.yaml"
    dvc_yaml.write_text("stages:\n  s:\n    cmd: x\n    params:\n      - model.image_size\n      - serve\n")
    p = stage_params("s", tmp_path / "none.yaml", dvc_yaml)
    with pytest.raises(UndeclaredParam, match="whose auto value comes from 'model.weights'"):
        _ = p.model.image_size  # `auto` resolves from the weights: a stage reading the size depends on them
    dvc_yaml.write_text("stages:\n  s:\n    cmd: x\n    params:\n      - model.image_size\n      - model.weights\n"
                        "      - model.arch\n      - serve\n")
    assert declared(dvc_yaml, "s") == {"model.image_size", "model.weights", "model.arch", "serve"}
    p = stage_params("s", tmp_path / "none.yaml", dvc_yaml)
    assert p.model.image_size == PRETRAINED_NETWORK["image_size"] and p.serve.port and p.paths.model
    assert p.serve.model_dump_json()
    with pytest.raises(UndeclaredParam, match="stage 's' reads params.yaml key 'model.name'"):
        _ = p.model.name
    with pytest.raises(UndeclaredParam, match="'train'"):
        _ = p.train.epochs
    with pytest.raises(UndeclaredParam, match="'model.width'"):
        p.model.model_dump_json()
    others = {"arch", "width", "middle_blocks", "weights", "dropout", "name"}
    assert "image_size" in p.model.model_dump_json(exclude=others)
    with pytest.raises(ParamsError, match="no stage named 'other'"):
        declared(dvc_yaml, "other")


def test_project_stages_declare_their_params():
    """Every stage in dvc.yaml lists params that exist in params.yaml (a typo would never trigger a rerun)."""
    import yaml

    from flowerpipe.pipeline.guard import declared

    raw = yaml.safe_load((ROOT / "params.yaml").read_text())
    for stage in yaml.safe_load((ROOT / "dvc.yaml").read_text())["stages"]:
        for key in declared(ROOT / "dvc.yaml", stage):
            node = raw
            for part in key.split("."):
                assert isinstance(node, dict) and part in node, (stage, key)
                node = node[part]


def test_the_command_refuses_a_params_file_that_is_not_there(tmp_path, capsys):
    from flowerpipe.cli import main

    with pytest.raises(SystemExit) as exit_:
        main(["--params", str(tmp_path / "nope.yaml"), "info"])
    assert exit_.value.code == 2  # it used the defaults silently before
    last = capsys.readouterr().err.splitlines()[-1]
    assert last == f"flowerpipe: error: --params {tmp_path / 'nope.yaml'}: no such file"


def test_the_command_serve_and_a_stage_answer_errors_and_ctrl_c_alike(tmp_path, monkeypatch, capsys):
    """One exit-code policy (errors.exit_code): a user's error is one line and 1, Ctrl-C one line and 130 (a stage's
    says its outputs are kept), a bug a traceback; for `flowerpipe`, `python -m flowerpipe.serving.command` and a
    stage alike."""
    from flowerpipe import cli
    from flowerpipe.errors import UserError
    from flowerpipe.pipeline import stage
    from flowerpipe.serving import command

    def raising(exc: BaseException):
        def fn(*args, **kwargs):
            raise exc
        return fn

    (tmp_path / "base" / "1").mkdir(parents=True)
    monkeypatch.chdir(tmp_path)
    for main in (cli.main, lambda argv: command.main(argv[1:])):
        assert main(["serve", str(tmp_path / "base"), "--label", "stable"]) == 1
        assert capsys.readouterr().err == "error: --label 'stable': expected NAME=VERSION, e.g. stable=1\n"
    monkeypatch.setattr(command, "run", raising(KeyboardInterrupt()))
    assert command.main([str(tmp_path / "base")]) == 130 and capsys.readouterr().err == "error: interrupted\n"
    monkeypatch.setattr(cli, "_info", raising(KeyboardInterrupt()))
    assert cli.main(["info"]) == 130 and capsys.readouterr().err == "error: interrupted\n"
    monkeypatch.setattr(cli, "_info", raising(ZeroDivisionError()))
    with pytest.raises(ZeroDivisionError):
        cli.main(["info"])
    for exc, code, err in [(UserError("no space left"), 1, "error: no space left\n"),
                           (KeyboardInterrupt(), 130,
                            "error: stage test_params interrupted; its previous outputs are kept\n")]:
        monkeypatch.setattr(stage, "quiet_tensorflow", raising(exc))
        with pytest.raises(SystemExit) as exit_:
            stage.run(lambda p: None, tensorflow=False)
        assert exit_.value.code == code and capsys.readouterr().err == err
    monkeypatch.setattr(stage, "quiet_tensorflow", raising(ZeroDivisionError()))
    with pytest.raises(ZeroDivisionError):
        stage.run(lambda p: None, tensorflow=False)


def test_params_yaml_and_params_py_give_the_same_defaults():
    """One source per default: the shipped params.yaml, validated, is exactly the defaults params.py declares (every
    section, the formats' own included), so neither can change alone."""
    import yaml
    from conftest import ROOT

    from flowerpipe.formats.registry import formats
    from flowerpipe.params import Params

    shipped = parse(yaml.safe_load((ROOT / "params.yaml").read_text()))
    defaults = Params()
    for name in Params.model_fields:
        assert getattr(shipped, name).model_dump() == getattr(defaults, name).model_dump(), name
    for f in formats():
        if f.section:
            assert f.settings_of(shipped).model_dump() == f.settings().model_dump(), f.section
    assert set(shipped.model_extra or {}) == {f.section for f in formats() if f.section}
