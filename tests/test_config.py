import ast
from pathlib import Path

import pytest

from rayood.config import (
    BackboneOptimSettings,
    ConfigError,
    DiffusionOptimSettings,
    EmaOptimSettings,
    load_config,
    parse_config,
    with_overrides,
)


def write(tmp_path, text):
    path = tmp_path / "run.yaml"
    path.write_text(text)
    return path


def test_demo_config_is_valid():
    config = load_config("configs/demo.yaml")
    assert config.screen.decision.score == "layerwise_mfsim"


@pytest.mark.parametrize("name", sorted(p.name for p in Path("configs").glob("*.yaml")))
def test_every_shipped_config_is_valid_and_its_decision_score_exists(name):
    from rayood.bundle import new_manifest

    config = load_config(Path("configs") / name)
    manifest = new_manifest(config.model, ["a", "b"], [8, 16], 16, written=())
    assert config.screen.decision.score in manifest.report_scores


def test_fusion_scores_must_be_scores_of_the_model(tmp_path):
    """The fit checks them first, before it plans its data or starts Ray (the settings sit below the detector
    registry that knows the scores)."""
    from rayood.train.fit import fit

    settings = {"model": {"fusion": {"scores": ["knn", "knnn"]}}}
    config = parse_config({**settings, "train": {"data": [str(tmp_path / "absent")], "bundle": str(tmp_path / "b")}})
    with pytest.raises(ConfigError, match=r"model\.fusion\.scores \['knnn'\] are not scores of this model"):
        fit(config)


def test_unknown_key_names_the_field_and_the_file(tmp_path):
    path = write(tmp_path, "screen:\n  batch_sise: 12\n")
    with pytest.raises(ConfigError) as error:
        load_config(path)
    assert "screen.batch_sise" in str(error.value) and str(path) in str(error.value)
    assert "unknown key" in str(error.value)


def test_wrong_type_names_the_field(tmp_path):
    with pytest.raises(ConfigError, match=r"train\.backbone\.epochs"):
        load_config(write(tmp_path, "train:\n  backbone:\n    epochs: many\n"))


@pytest.mark.parametrize(
    "data, field",
    [
        ({"screen": {"min_actors": 3, "max_actors": 1}}, "screen"),
        ({"screen": {"decision": {"alpha": 1.5}}}, "screen.decision.alpha"),
        ({"model": {"layerwise": {"noise_level": 200}}}, "model.layerwise"),
        ({"model": {"backbone": {"widths": [8, 16], "blocks": [1]}}}, "model.backbone"),
        ({"model": {"preprocess": {"std": [0.1, 0, 0.1]}}}, "model.preprocess.std"),
        ({"train": {"calibration_fraction": 0}}, "train.calibration_fraction"),
    ],
)
def test_impossible_values_are_rejected(data, field):
    with pytest.raises(ConfigError, match=field.replace(".", r"\.")):
        parse_config(data, "inline")


def test_truth_column_must_be_passed_through():
    with pytest.raises(ConfigError, match="passthrough_columns"):
        parse_config({"screen": {"truth": {"column": "group", "id_values": ["id"]}}})


@pytest.mark.parametrize("name", ["status", "id", "source", "is_ood", "score_knn", "pvalue_fused", "predicted_class"])
def test_passthrough_columns_may_not_replace_computed_ones(name):
    with pytest.raises(ConfigError, match=f"screen.*passthrough_columns.*{name}"):
        parse_config({"screen": {"passthrough_columns": ["label", name]}})
    parse_config({"screen": {"passthrough_columns": ["label", "status_note"]}})


def test_command_line_overrides_are_validated():
    config = parse_config({})
    changed = with_overrides(config, "screen", inputs=("a", "b"), output=None)
    assert changed.screen.inputs == ("a", "b") and changed.screen.output is None
    with pytest.raises(ConfigError, match="the command line"):
        with_overrides(config, "screen", batch_size=-1)


def test_fingerprint_changes_with_settings():
    from rayood.train.stages import stage_fingerprint

    a = parse_config({})
    b = parse_config({"train": {"seed": 1}})
    assert stage_fingerprint(a, "backbone") != stage_fingerprint(b, "backbone")
    elsewhere = parse_config(
        {
            "train": {
                "bundle": "s3://b/x",
                "checkpoint_path": "/tmp/c",
                "overwrite": True,
                "max_failures": 1,
                "torch_threads": 2,
                "cache_max_bytes": 10,
            }
        }
    )
    assert stage_fingerprint(a, "backbone") == stage_fingerprint(elsewhere, "backbone"), (
        "the destination does not change the fit"
    )


def test_stage_fingerprints_follow_what_each_stage_reads():
    from rayood.train.stages import stage_fingerprint

    base = parse_config({})
    denoiser = parse_config({"train": {"layerwise": {"epochs": 3}}})
    assert stage_fingerprint(base, "backbone") == stage_fingerprint(denoiser, "backbone")
    assert stage_fingerprint(base, "layerwise") != stage_fingerprint(denoiser, "layerwise")
    backbone = parse_config({"model": {"backbone": {"widths": [8, 8, 8, 8]}}})
    assert stage_fingerprint(base, "layerwise") != stage_fingerprint(backbone, "layerwise"), "it reads the backbone"
    assert stage_fingerprint(base, "ddp") == stage_fingerprint(backbone, "ddp")
    test_time = parse_config(
        {"model": {"ddp": {"draws": 3, "stride": 40}, "layerwise": {"noise_level": 5}, "backbone": {"flip_tta": True}}}
    )
    assert all(stage_fingerprint(base, s) == stage_fingerprint(test_time, s) for s in ("backbone", "layerwise", "ddp"))
    data = parse_config({"train": {"data": ["other.parquet"]}})
    assert all(stage_fingerprint(base, s) != stage_fingerprint(data, s) for s in ("backbone", "layerwise", "ddp"))


def test_a_moved_key_fails_with_its_new_name():
    with pytest.raises(ConfigError, match=r"train\.ddpm is now train\.ddp"):
        parse_config({"train": {"ddpm": {"epochs": 3}}})
    assert parse_config({"train": {"ddp": {"epochs": 3}}}).train.ddp.epochs == 3


def test_s3_secrets_never_travel_inside_the_pickled_filesystem(monkeypatch):
    """Every Ray task gets a pickled copy of the filesystem: it must not carry the keys (issue 12, item 17)."""
    import pickle

    from rayood.config import S3Settings
    from rayood.storage import resolve

    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "AKIDEXAMPLEKEYID0001")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "very-secret-value-42")
    location = resolve("s3://bucket/corpus", S3Settings(endpoint_url="http://127.0.0.1:9000"))
    payload = pickle.dumps(location)
    assert b"very-secret-value-42" not in payload and b"AKIDEXAMPLEKEYID0001" not in payload
    with pytest.raises(ConfigError, match="s3.endpoint_url.*credentials"):
        parse_config({"s3": {"endpoint_url": "http://admin:hunter2@127.0.0.1:9000"}})


def test_an_object_store_below_rays_minimum_names_the_field():
    with pytest.raises(ConfigError, match=r"ray\.object_store_memory"):
        parse_config({"ray": {"object_store_memory": 10 * 2**20}})
    assert parse_config({"ray": {"object_store_memory": 2**30}}).ray.object_store_memory == 2**30


def _attributes_read(path: str, definitions: set[str] | None = None) -> set[str]:
    """Every ``x.name`` read in ``path``'s functions and classes named ``definitions`` (all of it when None)."""
    tree = ast.parse(Path(path).read_text())
    roots = (
        [tree]
        if definitions is None
        else [
            node
            for node in ast.walk(tree)
            if isinstance(node, ast.FunctionDef | ast.ClassDef) and node.name in definitions
        ]
    )
    return {node.attr for root in roots for node in ast.walk(root) if isinstance(node, ast.Attribute)}


BACKBONE_CODE = [
    ("rayood/train/loops.py", {"backbone_loop"}),
    ("rayood/train/steps.py", {"BackboneEpoch", "new_backbone_objective"}),
    ("rayood/train/recipe.py", None),
    ("rayood/train/objectives.py", None),
]
EMA_CODE = [("rayood/train/harness.py", {"EmaRun"})]


@pytest.mark.parametrize(
    "settings, code",
    [
        (BackboneOptimSettings, BACKBONE_CODE),
        (EmaOptimSettings, [*EMA_CODE, ("rayood/train/loops.py", {"head_loop"})]),
        (EmaOptimSettings, [*EMA_CODE, ("rayood/train/loops.py", {"layerwise_loop"})]),
        (DiffusionOptimSettings, [*EMA_CODE, ("rayood/train/loops.py", {"ddp_loop"})]),
    ],
)
def test_every_optimiser_setting_is_read_by_the_loop_it_configures(settings, code):
    """A setting that validates and enters the stage fingerprint but that nothing reads is a silent no-op
    (``train.backbone.ema_decay`` was one)."""
    read = set().union(*(_attributes_read(path, definitions) for path, definitions in code))
    assert sorted(set(settings.model_fields) - read) == []


def test_the_backbone_setting_that_was_never_read_is_refused_by_name():
    with pytest.raises(ConfigError, match=r"train\.backbone: .*ema_decay: the backbone keeps no moving average"):
        parse_config({"train": {"backbone": {"ema_decay": 0.99}}})
