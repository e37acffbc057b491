from pathlib import Path

import pytest

from dualmedia.settings import Settings


def test_defaults_point_at_the_local_stack(tmp_path: Path) -> None:
    s = Settings(_env_file=None, home=tmp_path)
    assert s.s3_endpoint == "http://127.0.0.1:9000"
    assert s.mlflow_uri == "http://127.0.0.1:5000"
    assert s.airflow_base_url == "http://127.0.0.1:8080"
    assert s.torchserve_management == "http://127.0.0.1:8086"
    assert s.torchserve_key_path == tmp_path.resolve() / "torchserve" / "key_file.json"


def test_environment_switches_to_external_services(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DUALMEDIA_S3_ENDPOINT_URL", "https://minio.example:9000")
    monkeypatch.setenv("DUALMEDIA_MLFLOW_TRACKING_URI", "https://mlflow.example")
    monkeypatch.setenv("DUALMEDIA_AIRFLOW_URL", "https://airflow.example/")
    s = Settings(_env_file=None)
    assert s.s3_endpoint == "https://minio.example:9000"
    assert s.mlflow_uri == "https://mlflow.example"
    assert s.airflow_base_url == "https://airflow.example"


def test_empty_endpoint_means_aws(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DUALMEDIA_S3_ENDPOINT_URL", "")
    assert Settings(_env_file=None).s3_endpoint is None


def test_dotenv_file_is_read(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / ".env").write_text("DUALMEDIA_RAW_BUCKET=from-dotenv\n")
    monkeypatch.chdir(tmp_path)
    assert Settings().raw_bucket == "from-dotenv"


def test_secrets_never_print(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DUALMEDIA_S3_SECRET_KEY", "topsecret-123")
    monkeypatch.setenv("DUALMEDIA_AIRFLOW_PASSWORD", "pw-456")
    s = Settings(_env_file=None)
    for text in (repr(s), str(s), s.model_dump_json(), str(s.public_dict())):
        assert "topsecret-123" not in text
        assert "pw-456" not in text
    # ... but the stack's child processes get the real values.
    assert s.child_env()["DUALMEDIA_S3_SECRET_KEY"] == "topsecret-123"
    assert s.airflow_admin_password() == "pw-456"


def test_child_env_round_trips(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    s = Settings(_env_file=None, home=tmp_path, s3_port=12345, raw_bucket="b1")
    for key, value in s.child_env().items():
        monkeypatch.setenv(key, value)
    again = Settings(_env_file=None)
    assert again.s3_port == 12345
    assert again.raw_bucket == "b1"
    assert again.home_dir == tmp_path.resolve()


def test_missing_local_credentials_explain_themselves(tmp_path: Path) -> None:
    s = Settings(_env_file=None, home=tmp_path)
    with pytest.raises(RuntimeError, match="DUALMEDIA_AIRFLOW_PASSWORD"):
        s.airflow_admin_password()
    with pytest.raises(RuntimeError, match="DUALMEDIA_TORCHSERVE_MANAGEMENT_KEY"):
        s.torchserve_key("management")
