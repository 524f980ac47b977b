"""The worst state as favicon and tab title (pure), and the two favicon routes over HTTP."""

from __future__ import annotations

import base64
import xml.etree.ElementTree as ET
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from tests.watchdog.test_api import Env, close_env, make_env, status
from watchdog.favicon import (
    GREEN,
    GREY,
    MEDIA_TYPE,
    RED,
    YELLOW,
    data_url,
    favicon_svg,
    favicon_variants,
    headline,
    page_title,
    tone,
    worst_state,
)
from watchdog.states import TargetState

SVG_NS = "{http://www.w3.org/2000/svg}"


def fill_of(svg: str) -> str | None:
    """The fill of the icon's disc (its first circle), parsing the SVG as XML."""
    root = ET.fromstring(svg)
    assert root.tag == f"{SVG_NS}svg"
    circle = root.find(f"{SVG_NS}circle")
    assert circle is not None
    return circle.get("fill")


def test_worst_state_ranks_down_over_everything_and_stopped_over_healthy() -> None:
    assert worst_state(["healthy", "degraded", "failed", "unhealthy"]) is TargetState.FAILED
    assert worst_state(["healthy", "stopped"]) is TargetState.STOPPED
    assert worst_state(["stopped", "starting"]) is TargetState.STARTING
    assert worst_state([TargetState.DEGRADED, TargetState.RESTARTING]) is TargetState.RESTARTING
    assert worst_state(["healthy", "no-such-state"]) is TargetState.HEALTHY
    assert worst_state([]) is None


@pytest.mark.parametrize(
    ("state", "colour"),
    [
        (TargetState.HEALTHY, GREEN),
        (TargetState.DEGRADED, YELLOW),
        (TargetState.STARTING, YELLOW),
        (TargetState.RESTARTING, YELLOW),
        (TargetState.UNHEALTHY, RED),
        (TargetState.FAILED, RED),
        (TargetState.STOPPED, GREY),
    ],
)
def test_favicon_is_well_formed_svg_in_the_colour_of_the_state(
    state: TargetState, colour: str
) -> None:
    assert fill_of(favicon_svg(state)) == colour


def test_favicon_without_targets_is_a_grey_ring() -> None:
    root = ET.fromstring(favicon_svg(None))
    circle = root.find(f"{SVG_NS}circle")
    assert circle is not None and circle.get("fill") == "none" and circle.get("stroke") == GREY
    assert tone(None) == "none" and tone("nonsense") == "none"


def test_data_url_round_trips_and_names_no_other_address() -> None:
    svg = favicon_svg(TargetState.FAILED)
    url = data_url(svg)
    assert url.startswith(f"data:{MEDIA_TYPE};base64,")
    assert "http" not in url  # base64: the SVG's namespace does not read as a link
    assert base64.b64decode(url.split(",", 1)[1]).decode() == svg
    variants = favicon_variants()
    assert set(variants) == {str(s) for s in TargetState} | {""}


def test_title_names_the_targets_in_the_worst_state() -> None:
    def targets(*pairs: tuple[str, str]) -> list[dict[str, str]]:
        return [{"name": name, "state": state} for name, state in pairs]

    assert page_title(targets(("backend", "failed"), ("web", "healthy"))) == (
        "\u2716 backend down \u00b7 erpwatch"
    )
    assert page_title(targets(("a", "degraded"), ("b", "degraded"))) == (
        "\u25b2 a and b degraded \u00b7 erpwatch"
    )
    three = targets(("a", "unhealthy"), ("b", "unhealthy"), ("c", "unhealthy"), ("d", "healthy"))
    assert page_title(three) == "\u2716 3 targets unhealthy \u00b7 erpwatch"
    assert page_title(targets(("a", "healthy"), ("b", "healthy"))) == (
        "\u2714 all healthy \u00b7 erpwatch"
    )
    assert page_title(targets(("erp", "stopped"))) == "\u25a0 erp stopped \u00b7 erpwatch"
    assert page_title([]) == "erpwatch status"
    assert headline([]) == "no targets"


# --- over HTTP ---------------------------------------------------------------------------------


@pytest.fixture
async def env(tmp_path: Path) -> AsyncIterator[Env]:
    e = await make_env(tmp_path)
    yield e
    await close_env(e)


@pytest.mark.parametrize("path", ["/favicon.svg", "/favicon.ico"])
async def test_favicon_routes_serve_the_worst_states_colour(env: Env, path: str) -> None:
    response = await env.client.get(path)
    assert response.status_code == 200
    assert response.headers["content-type"] == MEDIA_TYPE
    assert fill_of(response.text) == GREEN

    env.source.items = [status(), status(name="web", state=TargetState.FAILED)]
    response = await env.client.get(path)
    assert fill_of(response.text) == RED
    assert response.headers["cache-control"] == "no-store"


async def test_page_inlines_the_favicon_and_the_title_of_the_worst_state(env: Env) -> None:
    env.source.items = [status(), status(name="web", state=TargetState.DEGRADED)]
    html = (await env.client.get("/")).text
    assert "<title>\u25b2 web degraded \u00b7 erpwatch</title>" in html
    href = html.split('id="favicon" href="', 1)[1].split('"', 1)[0]
    assert href.startswith(f"data:{MEDIA_TYPE};base64,")
    assert fill_of(base64.b64decode(href.split(",", 1)[1]).decode()) == YELLOW
