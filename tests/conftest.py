from __future__ import annotations

import os
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis

from .services import MotoService, PostgresService, RedisService

ROOT = Path(__file__).resolve().parent.parent
AWS_ENV = {
    "AWS_ACCESS_KEY_ID": "testing",
    "AWS_SECRET_ACCESS_KEY": "testing",
    "AWS_DEFAULT_REGION": "ap-northeast-1",
}


@pytest.fixture(autouse=True)
def clean_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Iterator[None]:
    """Every test starts with no DISPATCHER_* or AWS settings, an English locale and its own data directory."""
    for key in list(os.environ):
        if key.startswith(("DISPATCHER_", "AWS_")):
            monkeypatch.delenv(key)
    # English unless a test asks for Japanese (tests/test_i18n.py), whatever the developer's own locale is
    for key in ("LANGUAGE", "LC_ALL", "LC_MESSAGES"):
        monkeypatch.delenv(key, raising=False)
    monkeypatch.setenv("LANG", "C.UTF-8")
    monkeypatch.setenv("DISPATCHER_DATA_DIR", str(tmp_path / "var"))
    monkeypatch.setenv("DISPATCHER_CONFIG", str(ROOT / "tests" / "data" / "empty.toml"))
    yield
    from dispatcher import broker, runtime
    from dispatcher.core import clock

    clock.start_at(None)
    runtime.use(None)
    broker._installed = None


@pytest.fixture(scope="session")
def redis_service() -> Iterator[str]:
    service = RedisService()
    yield service.start()
    service.stop()


@pytest.fixture
def redis_url(redis_service: str, monkeypatch: pytest.MonkeyPatch) -> str:
    client = redis.Redis.from_url(redis_service)
    client.flushdb()
    monkeypatch.setenv("DISPATCHER_REDIS_URL", redis_service)
    return redis_service


@pytest.fixture(scope="session")
def postgres_service() -> Iterator[str]:
    service = PostgresService()
    yield service.start()
    service.stop()


@pytest.fixture
def postgres_url(postgres_service: str) -> str:
    import sqlalchemy

    from dispatcher.ledger import metadata

    engine = sqlalchemy.create_engine(postgres_service)
    metadata.drop_all(engine)
    engine.dispose()
    return postgres_service


@pytest.fixture(params=["sqlite", "postgresql"])
def ledger_url(request: pytest.FixtureRequest, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> str:
    if request.param == "sqlite":
        url = f"sqlite:///{tmp_path / 'ledger.db'}"
    else:
        url = request.getfixturevalue("postgres_url")
    monkeypatch.setenv("DISPATCHER_DATABASE_URL", url)
    return url


@pytest.fixture(scope="session")
def moto_service() -> Iterator[MotoService]:
    service = MotoService()
    service.start()
    yield service
    service.stop()


@pytest.fixture
def moto(moto_service: MotoService, monkeypatch: pytest.MonkeyPatch) -> MotoService:
    moto_service.reset()
    for key, value in {**AWS_ENV, "AWS_ENDPOINT_URL": moto_service.url}.items():
        monkeypatch.setenv(key, value)
    return moto_service


@pytest.fixture
def dispatcher_cmd() -> list[str]:
    """The installed console script, as an operator runs it."""
    exe = Path(sys.executable).parent / "dispatcher"
    return [str(exe)] if exe.exists() else [sys.executable, "-m", "dispatcher.cli"]


@pytest.fixture
def rt(moto: MotoService, redis_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[object]:
    """An in-process runtime sending through SES and SNS on moto, SQLite ledger, real Redis."""
    from .feedback_helpers import ses_runtime

    monkeypatch.setenv("DISPATCHER_DATABASE_URL", f"sqlite:///{tmp_path / 'ledger.db'}")
    runtime = ses_runtime(monkeypatch)
    yield runtime
    runtime.close()
