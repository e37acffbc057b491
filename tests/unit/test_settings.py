import json
import os
import stat
import threading
from pathlib import Path

import pytest

from dualmedia import credentials
from dualmedia.settings import Settings


def test_defaults_point_at_the_local_stack(tmp_path: Path) -> None:
    s = Settings(_env_file=None, home=tmp_path)
    assert s.s3_endpoint == "http://127.0.0.1:9000"
    assert s.mlflow_uri == "http://127.0.0.1:5000"
    assert s.airflow_base_url == "http://127.0.0.1:8080"
    assert s.torchserve_management == "http://127.0.0.1:8086"
    assert s.torchserve_key_path == tmp_path.resolve() / "torchserve" / "key_file.json"


def test_environment_switches_to_external_services(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)  # the default home is relative: keep it out of the checkout
    monkeypatch.setenv("DUALMEDIA_S3_ENDPOINT_URL", "https://minio.example:9000")
    monkeypatch.setenv("DUALMEDIA_MLFLOW_TRACKING_URI", "https://mlflow.example")
    monkeypatch.setenv("DUALMEDIA_AIRFLOW_URL", "https://airflow.example/")
    s = Settings(_env_file=None)
    assert s.s3_endpoint == "https://minio.example:9000"
    assert s.mlflow_uri == "https://mlflow.example"
    assert s.airflow_base_url == "https://airflow.example"


def test_empty_endpoint_means_aws(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("DUALMEDIA_S3_ENDPOINT_URL", "")
    assert Settings(_env_file=None).s3_endpoint is None


def test_dotenv_file_is_read(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / ".env").write_text("DUALMEDIA_RAW_BUCKET=from-dotenv\n")
    monkeypatch.chdir(tmp_path)
    assert Settings().raw_bucket == "from-dotenv"


def test_secrets_never_print(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
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


# ---- credentials generated per install ------------------------------------------------------
def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def _generated(s: Settings) -> list[str]:
    assert s.s3_access_key is not None and s.s3_secret_key is not None
    assert s.mlflow_password is not None
    return [
        s.s3_access_key.get_secret_value(),
        s.s3_secret_key.get_secret_value(),
        s.mlflow_password.get_secret_value(),
        credentials.local_mlflow_secrets(s.home_dir)["flask_secret_key"],
    ]


def test_local_credentials_are_generated_per_install_in_owner_only_files(tmp_path: Path) -> None:
    first = Settings(_env_file=None, home=tmp_path / "one")
    second = Settings(_env_file=None, home=tmp_path / "two")
    a, b = _generated(first), _generated(second)
    # Not the fixed keys of old, long enough, and different in every fresh home.
    assert not {"dualmedia", "dualmedia-secret"} & set(a)
    assert all(len(value) >= 20 for value in a[1:])
    assert not set(a) & set(b)
    for s in (first, second):
        folder = s.home_dir / "secrets"
        assert _mode(folder) == 0o700
        files = sorted(folder.iterdir())
        assert [f.name for f in files] == ["mlflow.json", "s3.json"]
        assert all(_mode(f) == 0o600 for f in files)
    # The same home gives the same credentials again (what the running services use).
    assert _generated(Settings(_env_file=None, home=tmp_path / "one")) == a
    assert first.mlflow_credentials() == ("admin", a[2])


def test_racing_processes_share_one_generated_file(tmp_path: Path) -> None:
    found: list[dict[str, str]] = []
    threads = [
        threading.Thread(target=lambda: found.append(credentials.local_s3_keys(tmp_path)))
        for _ in range(8)
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(found) == 8 and all(keys == found[0] for keys in found)
    assert [f.name for f in (tmp_path / "secrets").iterdir()] == ["s3.json"]  # no temp left


def test_a_loosened_credentials_file_is_made_owner_only_again(tmp_path: Path) -> None:
    keys = credentials.local_s3_keys(tmp_path)
    path = tmp_path / "secrets" / "s3.json"
    path.chmod(0o644)
    assert credentials.local_s3_keys(tmp_path) == keys
    assert _mode(path) == 0o600


def test_explicit_credentials_win_and_external_services_generate_nothing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("DUALMEDIA_S3_ACCESS_KEY", "explicit-access")
    monkeypatch.setenv("DUALMEDIA_S3_SECRET_KEY", "explicit-secret-1")
    monkeypatch.setenv("DUALMEDIA_MLFLOW_USERNAME", "ci-bot")
    monkeypatch.setenv("DUALMEDIA_MLFLOW_PASSWORD", "explicit-password-2")
    s = Settings(_env_file=None, home=tmp_path / "explicit")
    assert s.s3_access_key is not None and s.s3_secret_key is not None
    assert s.s3_access_key.get_secret_value() == "explicit-access"
    assert s.s3_secret_key.get_secret_value() == "explicit-secret-1"
    assert s.mlflow_credentials() == ("ci-bot", "explicit-password-2")
    assert not (s.home_dir / "secrets").exists()

    for name in ("S3_ACCESS_KEY", "S3_SECRET_KEY", "MLFLOW_USERNAME", "MLFLOW_PASSWORD"):
        monkeypatch.delenv(f"DUALMEDIA_{name}")
    monkeypatch.setenv("DUALMEDIA_S3_ENDPOINT_URL", "https://minio.example:9000")
    monkeypatch.setenv("DUALMEDIA_MLFLOW_TRACKING_URI", "https://mlflow.example")
    external = Settings(_env_file=None, home=tmp_path / "external")
    assert external.s3_access_key is None and external.s3_secret_key is None
    assert external.mlflow_credentials() is None
    assert not (external.home_dir / "secrets").exists()


def test_generated_credentials_never_print_but_reach_child_processes(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    s = Settings(_env_file=None, home=tmp_path)
    generated = _generated(s)
    for text in (repr(s), str(s), s.model_dump_json(), json.dumps(s.public_dict())):
        assert not [value for value in generated if value in text]
    env = s.child_env()
    assert env["DUALMEDIA_S3_SECRET_KEY"] == generated[1]
    assert env["DUALMEDIA_MLFLOW_PASSWORD"] == generated[2]
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    assert _generated(Settings(_env_file=None)) == generated


def test_the_mlflow_uri_hands_its_credentials_to_the_mlflow_library(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from mlflow.utils.credentials import get_default_host_creds

    monkeypatch.delenv("MLFLOW_TRACKING_USERNAME", raising=False)
    monkeypatch.delenv("MLFLOW_TRACKING_PASSWORD", raising=False)
    s = Settings(_env_file=None, home=tmp_path)
    creds = get_default_host_creds(s.mlflow_uri)  # what every MLflow REST call sends
    assert (creds.username, creds.password) == s.mlflow_credentials()
    assert os.environ["MLFLOW_TRACKING_USERNAME"] == "admin"
