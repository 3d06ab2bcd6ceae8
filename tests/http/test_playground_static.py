"""The playground's files as served (no browser needed): the page at `/`, its modules under
`/static/`, nothing fetched from elsewhere, and the files shipped in the wheel."""

from __future__ import annotations

import re
import tomllib

import pytest
from fastapi.testclient import TestClient

from services.http.app import create_app
from services.http.config import HttpConfig
from services.http.playground import STATIC_DIR
from tests.conftest import ROOT

STATIC_FILES = sorted(path.name for path in STATIC_DIR.iterdir())


@pytest.fixture(scope="module")
def client() -> TestClient:
    # Not entered as a context manager: no lifespan, so no gateway channel; static routes need none.
    return TestClient(create_app(HttpConfig(metrics_port=-1)))


def test_the_http_front_serves_the_page_at_root(client):
    reply = client.get("/")
    assert reply.status_code == 200
    assert reply.headers["content-type"].startswith("text/html")
    assert reply.headers["cache-control"] == "no-cache"
    assert '<script type="module" src="static/app.js">' in reply.text


@pytest.mark.parametrize("name", STATIC_FILES)
def test_every_static_file_is_served_with_its_type(client, name):
    reply = client.get(f"/static/{name}")
    assert reply.status_code == 200
    kind = {".js": "text/javascript", ".css": "text/css", ".html": "text/html"}[name[name.rindex("."):]]
    assert reply.headers["content-type"].startswith(kind)


def test_an_unknown_static_file_is_the_json_404(client):
    reply = client.get("/static/nope.js")
    assert reply.status_code == 404
    assert reply.json()["error"]["code"] == "not_found"


@pytest.mark.parametrize("name", STATIC_FILES)
def test_nothing_is_fetched_from_another_origin(name):
    """Offline users and CI: no CDN, font or analytics URL in any file."""
    text = (STATIC_DIR / name).read_text()
    assert not re.search(r"""(https?:)?//[a-z0-9.-]+\.[a-z]{2,}""", text, re.IGNORECASE)


def test_every_module_import_resolves_to_a_static_file():
    for path in STATIC_DIR.glob("*.js"):
        for target in re.findall(r"""from\s+["']\./([^"']+)["']|new URL\(["']\./([^"']+)["']""", path.read_text()):
            name = target[0] or target[1]
            assert (STATIC_DIR / name).is_file(), f"{path.name} imports ./{name}, which is not there"


def test_the_static_files_are_package_data():
    config = tomllib.loads((ROOT / "pyproject.toml").read_text())
    assert "static/*" in config["tool"]["setuptools"]["package-data"]["services.http"]
