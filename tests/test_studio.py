"""The studio in a real browser: Playwright for Python driving Debian's chromium against `daguerre serve --demo`.

A photographer's path: sign in, size from a preset, build the prompt with the formula builder, generate and
watch progress previews, get the image in the gallery, use its settings again (same bytes), reproduce from the
gallery (identical bytes), compare two, a saved character and a LoRA, a ControlNet guide with the server's
canny preview, start from an uploaded image, paint a mask and inpaint, outpaint, cancel a long task, see a bad
value's message next to its field, reload and keep the gallery, and no console errors throughout. Screenshots
go to $STUDIO_SHOTS (or the test's temp folder)."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import httpx
import numpy as np
import pytest
from PIL import Image

from tests.conftest import free_port
from tests.test_serve import _start, _stop

playwright = pytest.importorskip("playwright.sync_api", reason="Playwright for Python is a test dependency")
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
pytestmark = pytest.mark.skipif(CHROMIUM is None, reason="Debian's chromium is not installed (CI installs it)")
KEY = "studio-test-key"


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    cwd = tmp_path_factory.mktemp("studio")
    port = free_port()
    proc = _start(f"daguerre serve --demo --port {port} --api-key {KEY}", cwd, port)
    yield f"http://127.0.0.1:{port}", cwd
    _stop(proc)


@pytest.fixture(scope="module")
def browser():
    with playwright.sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
        yield b
        b.close()


def _wait_done(page, count: int, timeout: float = 60_000):
    page.wait_for_function(f"document.querySelectorAll('.task .status').length >= {count} && "
                           "[...document.querySelectorAll('.task .status')].slice(0, "
                           f"{count}).every(s => s.textContent !== 'queued' && !s.textContent.startsWith('step') "
                           "&& !s.textContent.startsWith('next') && !s.textContent.startsWith('queued'))",
                           timeout=timeout)  # fmt: skip
    status = page.locator(".task .status").first.text_content()
    assert status == "done", status  # not an error message


@pytest.fixture
def page(browser, tmp_path, request):
    page = browser.new_page(viewport={"width": 1280, "height": 800})
    yield page
    if request.node.rep_call.failed if hasattr(request.node, "rep_call") else False:
        page.screenshot(path=str(tmp_path / "failure.png"))
    page.close()


def test_a_photographers_session(server, page, tmp_path):
    url, cwd = server
    shots = Path(os.environ.get("STUDIO_SHOTS", tmp_path))
    shots.mkdir(parents=True, exist_ok=True)
    errors = []
    page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
    page.on("pageerror", lambda e: errors.append(str(e)))
    page.goto(url + "/")

    # Sign in: the server wants a key; a wrong one is refused, the right one kept in the browser.
    page.fill("#api-key", "wrong")
    page.click("#sign-in")
    page.wait_for_selector("#key-error:text('refused')")
    page.fill("#api-key", KEY)
    page.click("#sign-in")
    page.wait_for_selector("#key-dialog", state="hidden")

    # Compose: a size preset snapped to multiples of 64, a lighting preset from the formula builder.
    page.select_option("#aspect", "3:2")
    page.select_option("#megapixels", "0.25")
    assert (page.input_value("#width"), page.input_value("#height")) == ("640", "448")
    page.fill("#width", "512")
    page.fill("#height", "512")
    page.fill("#prompt", "portrait of a fisherman, weathered skin, overcast harbour")
    lighting = page.locator("#formula-lighting option").nth(1)
    added = lighting.get_attribute("value")
    page.select_option("#formula-lighting", index=1)
    assert added in page.input_value("#prompt")
    page.fill("#steps", "40")  # slow enough on the tiny model to watch a few steps go by

    # Generate and watch: progress with step counts and a live preview, then the image, then the gallery.
    page.keyboard.press("Control+Enter")
    page.wait_for_selector(".task .status:text-matches('step \\\\d+ of 40')", timeout=60_000)
    page.wait_for_selector(".task img.preview, .task img[data-image]", timeout=60_000)
    _wait_done(page, 1)
    page.evaluate("window.scrollTo(0, 0)")
    page.screenshot(path=str(shots / "studio-compose.png"))
    first = page.locator(".task img[data-image]").first
    first_src = first.get_attribute("src")
    page.wait_for_selector(".card img")
    assert page.locator(".card").count() == 1

    # A bad value: the server's message, in plain words, next to the field.
    page.fill("#steps", "99")
    page.click("#generate")
    page.wait_for_selector(".field-error[data-for='steps']:text('steps')")
    assert "[1, 50]" in page.text_content(".field-error[data-for='steps']")
    page.fill("#steps", "4")

    # The gallery's settings give the same image again (same seed, same everything: the same bytes).
    page.fill("#prompt", "something else")
    page.click(".card >> text=Use settings")
    assert "fisherman" in page.input_value("#prompt") and page.is_checked("#seed-lock")
    page.click("#generate")
    _wait_done(page, 2)
    again = page.locator(".task").first.locator("img[data-image]").first.get_attribute("src")
    assert httpx.get(again).content == httpx.get(first_src).content

    # Reproduce from the gallery: the recipe runs again and the bytes are compared.
    page.locator(".card img").first.click()
    page.click("#details-reproduce")
    page.wait_for_selector("#details-verdict:text('identical bytes')", timeout=60_000)
    page.click("#details-close")
    page.wait_for_function("document.querySelectorAll('.card').length === 3")  # two runs and the reproduction
    # Side by side: two selected cards, their recipes' differences listed.
    page.locator(".card .pick").nth(0).check()
    page.locator(".card .pick").nth(1).check()
    page.click("#compare")
    page.wait_for_selector("#compare-dialog[open]")
    assert page.text_content("#compare-diff")
    page.click("#compare-close")

    # A saved character (anchor + locked seed) and a LoRA from the catalog.
    page.fill("#steps", "4")
    page.click("#save-character summary")
    page.fill("#character-name", "harbour-man")
    page.fill("#character-anchor", "a weathered fisherman in his 60s, grey beard")
    page.fill("#character-seed", "7")
    page.click("#character-save")
    page.wait_for_function("document.querySelector('#character').value === 'harbour-man'")
    page.click("#add-lora")
    assert page.locator(".lora select option").count() >= 1
    page.click("#generate")
    _wait_done(page, 3)
    page.select_option("#character", "")
    page.locator(".lora button").click()

    # A ControlNet guide: the server's canny preview, then a run that uses exactly those edges.
    photo = tmp_path / "photo.png"
    Image.fromarray((np.random.RandomState(0).rand(192, 256, 3) * 255).astype("uint8")).save(photo)
    page.set_input_files("#guide", str(photo))
    page.click("#canny-preview")
    page.wait_for_function("document.querySelector('#guide-preview').src.includes('/v1/images/')")
    page.click("#generate")
    _wait_done(page, 4)
    page.click("#drop-guide")

    # Image-to-image from an upload, then a painted mask (inpainting).
    page.set_input_files("#source", str(photo))
    page.wait_for_selector("#edit:not([hidden])")
    page.click("#generate")
    _wait_done(page, 5)
    box = page.locator("#mask-canvas").bounding_box()
    page.mouse.move(box["x"] + box["width"] * 0.3, box["y"] + box["height"] * 0.5)
    page.mouse.down()
    page.mouse.move(box["x"] + box["width"] * 0.6, box["y"] + box["height"] * 0.5, steps=8)
    page.mouse.up()
    page.screenshot(path=str(shots / "studio-inpaint.png"))
    page.click("#generate")
    _wait_done(page, 6)
    assert page.locator(".task").first.locator("img[data-image]").count() == 1
    # Outpaint: 64 px more on the right; the result is the source plus the border.
    page.click("#clear-mask")
    page.fill("#out-right", "64")
    page.click("#generate")
    _wait_done(page, 7)
    result = page.locator(".task").first.locator("img[data-image]").first
    page.wait_for_function("img => img.complete && img.naturalWidth > 0", arg=result.element_handle())
    assert result.evaluate("img => [img.naturalWidth, img.naturalHeight]") == [320, 192]
    page.fill("#out-right", "0")
    page.click("#drop-source")

    # Cancel a long task: it stops, and says so.
    page.fill("#steps", "50")
    page.fill("#width", "1024")
    page.fill("#height", "1024")
    page.click("#generate")
    page.wait_for_selector(".task .status:text-matches('step \\\\d+ of 50')", timeout=60_000)
    page.locator(".task").first.locator(".cancel").click()
    page.wait_for_selector(".task .status:text('cancelled')", timeout=30_000)

    # Reload: still signed in, the gallery is the server's.
    page.reload()
    page.wait_for_selector(".card img")
    assert page.locator(".card").count() == 8
    gallery = httpx.get(f"{url}/v1/gallery", headers={"Authorization": f"Bearer {KEY}"}).json()["data"]
    [used] = [g["recipe"] for g in gallery if g["recipe"].get("character") == "harbour-man"]
    assert used["seed"] == 7 and used["positive_prompt"].startswith("a weathered fisherman")
    assert any(g["recipe"]["loras"] for g in gallery)  # the LoRA picked from the catalog
    page.screenshot(path=str(shots / "studio-gallery.png"), full_page=True)

    # A phone-width screen: one column, nothing cut off.
    page.set_viewport_size({"width": 390, "height": 844})
    assert page.evaluate("document.documentElement.scrollWidth") <= 390
    # Chromium logs every HTTP error answer as "Failed to load resource"; those are the API doing its job (the
    # wrong key's 401s, the bad value's 400). Anything else (a script error) fails the test.
    network = [e for e in errors if e.startswith("Failed to load resource")]
    assert [e for e in errors if e not in network] == []
    assert all("401" in e or "400" in e for e in network), network
