from pathlib import Path

import pytest
from pydantic import ValidationError

from rabbit_serve.settings import DEFAULT_MODEL_PATH, Settings


@pytest.fixture(autouse=True)
def clean_env(monkeypatch):
    for name in Settings.model_fields:
        monkeypatch.delenv(name.upper(), raising=False)


def test_defaults_point_at_the_committed_model():
    settings = Settings()
    assert settings.model_path == DEFAULT_MODEL_PATH
    assert DEFAULT_MODEL_PATH.is_file()
    assert settings.amqp_url.startswith("amqp://")


def test_original_names_are_read_from_the_environment(monkeypatch):
    monkeypatch.setenv("MAX_BATCH_SIZE", "8")
    monkeypatch.setenv("BATCH_TIMEOUT", "0.25")
    monkeypatch.setenv("TIMEOUT", "3")
    monkeypatch.setenv("NUM_CONSUMERS", "4")
    monkeypatch.setenv("AMQP_URL", "amqps://u:p@broker:5671/vh")
    monkeypatch.setenv("MODEL_PATH", "/models/other.onnx")
    s = Settings()
    assert (s.max_batch_size, s.batch_timeout, s.timeout, s.num_consumers) == (8, 0.25, 3.0, 4)
    assert s.amqp_url == "amqps://u:p@broker:5671/vh"
    assert s.model_path == Path("/models/other.onnx")


def test_overrides_beat_the_environment_in_any_case(monkeypatch):
    monkeypatch.setenv("MAX_BATCH_SIZE", "8")
    s = Settings.from_overrides({"MAX_BATCH_SIZE": 2, "timeout": 1.5})
    assert s.max_batch_size == 2 and s.timeout == 1.5


def test_prefetch_covers_batches_in_flight_plus_one_filling():
    s = Settings(max_batch_size=16, max_batches_in_flight=2)
    assert s.prefetch_count == 48


@pytest.mark.parametrize(
    "env,value",
    [("MAX_BATCH_SIZE", "0"), ("BATCH_TIMEOUT", "-1"), ("TIMEOUT", "0"), ("REQUEST_QUEUE", " ")],
)
def test_invalid_values_are_refused(monkeypatch, env, value):
    monkeypatch.setenv(env, value)
    with pytest.raises(ValidationError):
        Settings()


def test_default_top_k_cannot_exceed_max():
    with pytest.raises(ValidationError):
        Settings(default_top_k=10, max_top_k=5)


def test_settings_are_immutable_and_picklable():
    import pickle

    s = Settings()
    assert pickle.loads(pickle.dumps(s)) == s
    with pytest.raises(ValidationError):
        s.timeout = 1  # type: ignore[misc]
