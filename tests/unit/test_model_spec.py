"""The model spec: the one place a model's input contract and labels are written."""

import json
import re
from pathlib import Path

import pytest

from rabbit_serve.labels import IMAGENET_1K, load_labels
from rabbit_serve.model_spec import ModelSpec, load_spec, spec_path, write_spec
from rabbit_serve.settings import DEFAULT_MODEL_PATH

LITE0 = {
    "name": "efficientnet-lite0",
    "input_size": 224,
    "resize_short_side": 256,
    "crop": 224,
    "mean": 127.0,
    "std": 128.0,
    "layout": "NCHW",
    "color": "RGB",
    "num_classes": 1000,
    "labels": "imagenet-1k",
}


def test_the_shipped_model_has_the_efficientnet_lite0_contract_beside_it():
    assert spec_path(DEFAULT_MODEL_PATH) == DEFAULT_MODEL_PATH.with_suffix(".json")
    spec = load_spec(DEFAULT_MODEL_PATH)
    assert spec == ModelSpec.model_validate(LITE0)
    assert spec.mean == (127.0, 127.0, 127.0) and spec.std == (128.0, 128.0, 128.0)
    assert spec.input_shape == [3, 224, 224]


def test_the_readme_shows_the_shipped_spec():
    readme = (Path(__file__).resolve().parents[2] / "README.md").read_text(encoding="utf-8")
    blocks = re.findall(r"```json\n(.*?)```", readme, flags=re.DOTALL)
    assert LITE0 in [json.loads(block) for block in blocks]
    assert json.loads(spec_path(DEFAULT_MODEL_PATH).read_text()) == LITE0


def test_write_then_load_round_trips_and_keeps_scalars_scalar(tmp_path):
    spec = ModelSpec.model_validate(LITE0)
    written = write_spec(spec, tmp_path / "m.onnx")
    assert written == tmp_path / "m.json"
    assert json.loads(written.read_text()) == LITE0
    assert load_spec(tmp_path / "m.onnx") == spec
    per_channel = spec.model_copy(update={"mean": (1.0, 2.0, 3.0)})
    write_spec(per_channel, tmp_path / "m.onnx")
    assert json.loads(written.read_text())["mean"] == [1.0, 2.0, 3.0]
    assert load_spec(tmp_path / "m.onnx").mean == (1.0, 2.0, 3.0)


@pytest.mark.parametrize(
    "change,fragment",
    [
        ({"crop": 200}, "must equal input_size"),
        ({"crop": 300, "input_size": 300}, "larger than resize_short_side"),
        ({"std": 0}, "std must be > 0"),
        ({"std": [1, 0, 1]}, "std must be > 0"),
        ({"mean": [1, 2]}, "mean"),
        ({"layout": "NHWC"}, "layout"),
        ({"color": "BGR"}, "color"),
        ({"num_classes": 0}, "num_classes"),
        ({"labels": ""}, "labels"),
        ({"resize": 256}, "resize"),  # unknown keys are typos, not extensions
    ],
)
def test_a_spec_that_cannot_be_served_is_refused_with_the_reason(tmp_path, change, fragment):
    (tmp_path / "m.json").write_text(json.dumps({**LITE0, **change}))
    with pytest.raises(ValueError, match=fragment) as err:
        load_spec(tmp_path / "m.onnx")
    assert "m.json" in str(err.value)


def test_every_field_is_required(tmp_path):
    for key in LITE0:
        (tmp_path / "m.json").write_text(json.dumps({k: v for k, v in LITE0.items() if k != key}))
        with pytest.raises(ValueError, match=key):
            load_spec(tmp_path / "m.onnx")


def test_a_model_without_a_spec_says_where_it_looked(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"m\.json"):
        load_spec(tmp_path / "m.onnx")
    (tmp_path / "m.json").write_text("{not json")
    with pytest.raises(ValueError, match="not a valid model spec"):
        load_spec(tmp_path / "m.onnx")


def test_the_spec_is_frozen():
    spec = ModelSpec.model_validate(LITE0)
    with pytest.raises(ValueError):
        spec.input_size = 160  # type: ignore[misc]


def test_imagenet_labels_by_name():
    labels = load_labels(IMAGENET_1K, DEFAULT_MODEL_PATH.parent, 1000)
    assert len(labels) == 1000 and labels[967] == "espresso"
    with pytest.raises(ValueError, match="1000 names; the model has 10"):
        load_labels(IMAGENET_1K, DEFAULT_MODEL_PATH.parent, 10)


def test_a_labels_file_beside_the_spec(tmp_path):
    (tmp_path / "labels.txt").write_text("zero\none two\n  three  \n", encoding="utf-8")
    assert load_labels("labels.txt", tmp_path, 3) == ("zero", "one two", "three")
    with pytest.raises(ValueError, match="3 names; the model has 4"):
        load_labels("labels.txt", tmp_path, 4)
    (tmp_path / "gap.txt").write_text("zero\n\ntwo\n", encoding="utf-8")
    with pytest.raises(ValueError, match="line 2 is empty"):
        load_labels("gap.txt", tmp_path, 3)
