"""Object storage: `rclone serve s3` over a folder on disk (S3 protocol, data survives)."""

from __future__ import annotations

import requests

from dualmedia.stack.base import Service, venv_bin


class ObjectStorageService(Service):
    name = "s3"
    title = "object storage"

    @property
    def url(self) -> str:
        return self.settings.s3_endpoint or "https://s3.amazonaws.com"

    def is_external(self) -> bool:
        return self.settings.s3_endpoint_url is not None

    def ports(self) -> dict[int, str]:
        return {self.settings.s3_port: "DUALMEDIA_S3_PORT"}

    def command(self) -> list[str]:
        s = self.settings
        return [
            str(venv_bin() / "rclone"),
            "serve",
            "s3",
            str(self.state_dir / "data"),
            "--addr",
            f"{s.host}:{s.s3_port}",
            "--config",
            "/dev/null",  # no rclone.conf: everything is on this command line
            "--log-level",
            "NOTICE",
        ]

    def extra_env(self) -> dict[str, str]:
        # The keys (generated per install unless set: settings, dualmedia/credentials.py) go
        # through rclone's environment, not its command line, so `ps` and the pid file never
        # show them; every request must be signed with them (no anonymous access).
        s = self.settings
        if s.s3_access_key is None or s.s3_secret_key is None:  # only for an external S3
            raise RuntimeError("the local S3 server needs DUALMEDIA_S3_ACCESS_KEY/_SECRET_KEY")
        key = f"{s.s3_access_key.get_secret_value()},{s.s3_secret_key.get_secret_value()}"
        # The variable is CSV (the flag can repeat): quote the pair so its comma stays in.
        return {"RCLONE_AUTH_KEY": f'"{key}"'}

    def prepare(self) -> None:
        (self.state_dir / "data").mkdir(parents=True, exist_ok=True)

    def is_healthy(self) -> bool:
        try:
            # Any S3 answer (even 403 for an anonymous request) means the server is up.
            return requests.get(self.url, timeout=2).status_code < 500
        except requests.RequestException:
            return False

    def after_start(self) -> None:
        from dualmedia.storage import ObjectStore

        s = self.settings
        store = ObjectStore(s)
        for bucket in (s.raw_bucket, s.lake_bucket, s.artifacts_bucket):
            store.ensure_bucket(bucket)
