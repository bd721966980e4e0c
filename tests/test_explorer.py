"""The attention explorer: its data against a store whose right answer is known, and the page in headless Chromium."""

import copy
import html
import json
import os
import re
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import xarray as xr
from browser import Browser, ensure_chromium
from conftest import prepared_shapes

from seg4diff.data.prepared import native_label, open_prepared
from seg4diff.reporting.explorer import explorer_data, render_html
from seg4diff.reporting.readout_maps import read_readout_maps, write_readout_maps
from seg4diff.segmentation.masks import class_maps

LAYERS, HEADS, SIGMAS, TOKENS, GRID = [0, 1, 2], [0, 1], [0.3, 0.6], 4, 64  # the label size: upsampling is exact


def known_store(prepared: xr.Dataset) -> xr.Dataset:
    """Layer 2: each class token attends exactly its class's pixels; layer 1: a blurred copy; layer 0: noise."""
    rng = np.random.default_rng(0)
    n = prepared.sizes["sample"]
    maps = rng.random((n, len(LAYERS), len(HEADS), len(SIGMAS), TOKENS, GRID, GRID)).astype(np.float32) * 0.01
    token_class = np.full((n, TOKENS), -1, np.int16)
    names = [str(c) for c in prepared.class_name.values]
    prompts, texts = [], np.full((n, TOKENS), "", dtype=object)
    for s in range(n):
        label = native_label(prepared, s)
        step = label.shape[0] // GRID
        classes = [c for c in np.unique(label) if c not in (0, 255)][:TOKENS]
        for k, c in enumerate(classes):
            mask = (label[::step, ::step] == c).astype(np.float32)
            token_class[s, k], texts[s, k] = c, names[c].split()[-1]
            maps[s, 2, :, :, k] += mask
            maps[s, 1, :, :, k] += 0.5 * mask + 0.5 * mask.mean()
        prompts.append(" and ".join(names[c] for c in classes))
    return xr.Dataset(
        {
            "image_to_text": (("sample", "layer", "head", "timestep", "token", "y", "x"), maps),
            "token_class": (("sample", "token"), token_class),
            "token_text": (("sample", "token"), texts),
            "prompt": ("sample", np.array(prompts, dtype=object)),
        },
        coords={
            "sample": np.arange(n),
            "layer": LAYERS,
            "head": HEADS,
            "timestep": np.asarray(SIGMAS) * 1000,
            "sigma": ("timestep", SIGMAS),
        },
        attrs={"model": "known", "split": "val"},
    )


def scores_table() -> pd.DataFrame:
    rows = [
        (l, t, "mean", "image_to_text", "miou", 0.2 + 0.3 * l + 0.01 * i, 0.1 + 0.3 * l, 0.3 + 0.3 * l)
        for l in LAYERS
        for i, t in enumerate(SIGMAS)
    ]
    return pd.DataFrame(rows, columns=["layer", "sigma", "head", "direction", "metric", "value", "ci_low", "ci_high"])


def readout_maps(store: xr.Dataset, path: Path) -> dict:
    """Two readouts of the known store's first 3 samples, written and read back as the readouts stage does: `noise`
    (layer 0) and `exact` (layer 2, whose maps are the labels)."""
    maps = []
    for s in range(3):
        sample = store.isel(sample=s)
        token_class = sample.token_class.values
        per_class = class_maps(sample.image_to_text.values, token_class, np.unique(token_class[token_class >= 0]))
        maps.append(np.stack([per_class[0, 0, 0], per_class[2, 0, 0]]))
    rows = [
        {"readout": "noise", "reads": "attention", "blocks": "layer 0"},
        {"readout": "exact", "reads": "attention", "blocks": "layer 2"},
    ]
    write_readout_maps(path, rows, [0.2, 0.3], maps)
    first = path.read_bytes()
    write_readout_maps(path, rows, [0.2, 0.3], maps)
    assert path.read_bytes() == first  # no timestamps: a rerun reproduces the DVC output's hash
    back = read_readout_maps(path)
    assert back["names"] == ["noise", "exact"] and back["thresholds"] == [0.2, 0.3] and len(back["maps"]) == 3
    np.testing.assert_array_equal(back["maps"][1], maps[1].astype(np.float32))
    assert read_readout_maps(path.with_name("absent.npz")) is None
    return back


@pytest.fixture(scope="module")
def page(tmp_path_factory):
    root = prepared_shapes(tmp_path_factory.mktemp("explorer"), ["val"], 32, 64, seed=5, num_val=5)
    prepared = open_prepared(root / "val.zarr")
    store = known_store(prepared)
    data = explorer_data(
        store,
        prepared,
        scores_table(),
        {"layer": 2, "sigma": 0.3},
        samples=4,
        background_threshold=0.2,
        readouts=readout_maps(store, root / "explorer_maps.npz"),
    )
    path = root / "explorer.html"
    path.write_text(render_html(data, "seg4diff attention explorer (test)"))
    return data, path, prepared


def test_the_page_shows_what_scoring_counts_on_a_store_with_a_known_answer(page):
    data, path, prepared = page
    assert len(data["samples"]) == 4 and data["heads"] == ["mean", 0, 1] and data["layers"] == LAYERS
    iou = np.array(data["class_iou"])  # (layer, head, σ, class); −1: class neither labelled nor predicted
    present = sorted({c for s in range(4) for c in np.unique(native_label(prepared, s)) if c not in (0, 255)})
    np.testing.assert_allclose(iou[2][:, :, present], 1.0)  # the exact layer segments perfectly, every head, every σ
    assert (iou[0][:, :, present] < 0.9).all()  # noise does not
    first = data["samples"][0]
    assert first["size"] == [64, 64]
    import base64
    import zlib

    prediction = np.frombuffer(zlib.decompress(base64.b64decode(first["pred"])), np.uint8).reshape(3, 3, 2, 64, 64)
    np.testing.assert_array_equal(
        prediction[2, 0, 0], native_label(prepared, 0)
    )  # layer 2, head mean, σ 0.3 = the label
    assert data["grounding"]["miou"][2][0] == pytest.approx(0.8) and data["expert"] == {"layer": 2, "sigma": 0.3}
    assert data["readouts"] == {
        "names": ["noise", "exact"],
        "reads": ["attention"] * 2,
        "blocks": ["layer 0", "layer 2"],
        "thresholds": [0.2, 0.3],
    }
    assert "readouts" in data["samples"][2] and "readouts" not in data["samples"][3]  # maps of 3 samples were given
    shown = np.frombuffer(zlib.decompress(base64.b64decode(first["readouts"]["pred"])), np.uint8).reshape(2, 64, 64)
    np.testing.assert_array_equal(shown[1], native_label(prepared, 0))  # the `exact` readout predicts the label
    assert (shown[0] != native_label(prepared, 0)).any()
    html = path.read_text()
    assert (
        not re.search(r"""(src|href)=["'](https?:)?//""", html) and "fetch(" not in html
    )  # nothing loaded from elsewhere
    assert path.stat().st_size < 2 * 2**20


@pytest.fixture(scope="module")
def browser():
    executable = ensure_chromium()
    if executable is None:
        pytest.skip(
            "Debian's chromium is not installed and apt-get could not install it (no root or no package source)"
        )
    chromium = Browser(executable)
    yield chromium
    chromium.close()


def test_the_page_in_headless_chromium_follows_its_controls_without_errors(page, browser, tmp_path):
    _, path, _ = page
    browser.open(path.as_uri())
    browser.wait_for("document.body.dataset.ready === '1'")  # the embedded arrays inflated
    attention = "document.getElementById('attention').toDataURL()"
    select = (
        "(id, value) => { const s = document.getElementById(id); s.value = value; "
        "s.dispatchEvent(new Event('change')); }"
    )
    assert browser.evaluate("document.getElementById('layer').value") == "2"  # opens on the expert
    before = browser.evaluate(attention)
    browser.evaluate(f"({select})('layer', '0')")
    after_layer = browser.evaluate(attention)
    assert after_layer != before and browser.evaluate("document.getElementById('attcaption').textContent").endswith(
        "layer 0"
    )
    words = browser.evaluate("document.getElementById('word').options.length")
    assert words >= 1
    if words > 1:
        browser.evaluate(f"({select})('word', '1')")
        assert browser.evaluate(attention) != after_layer
    browser.evaluate("document.dispatchEvent(new KeyboardEvent('keydown', {key: 'ArrowRight'}))")
    assert browser.evaluate("document.getElementById('layer').value") == "1"  # arrows step through layers
    browser.evaluate("document.querySelectorAll('#heatmap rect')[2 * 2 + 1].dispatchEvent(new MouseEvent('click'))")
    assert browser.evaluate("[document.getElementById('layer').value, document.getElementById('sigma').value]") == [
        "2",
        "1",
    ]
    browser.evaluate("document.querySelectorAll('#thumbs img')[3].click()")
    assert "3" in browser.evaluate("document.getElementById('sampleid').textContent") or browser.evaluate(
        "document.querySelectorAll('#thumbs img')[3].classList.contains('current')"
    )
    rows = browser.evaluate("document.querySelectorAll('#iou tr').length")
    assert rows >= 2
    browser.evaluate("document.querySelectorAll('#thumbs img')[0].click()")
    stored = browser.evaluate(attention)
    browser.evaluate(f"({select})('readout', '1')")  # the `exact` readout
    assert browser.evaluate(attention) != stored
    assert "readout exact" in browser.evaluate("document.getElementById('attcaption').textContent")
    assert browser.evaluate("document.getElementById('layer').disabled") is True
    assert "exact" in browser.evaluate("document.getElementById('predcaption').textContent")
    browser.evaluate(f"({select})('readout', '-1')")
    assert (
        browser.evaluate(attention) == stored and browser.evaluate("document.getElementById('layer').disabled") is False
    )
    shot = browser.screenshot(Path(os.environ.get("EXPLORER_SCREENSHOT", tmp_path / "explorer.png")))
    assert shot.stat().st_size > 10_000
    assert browser.console_errors == []
    assert all(url.startswith(("file:", "data:", "about:")) for url in browser.requests), browser.requests


# Dataset strings that are markup: each would run (set window.__pwned) or break the page if it were parsed as HTML.
HOSTILE_CLASSES = {  # class ids of sample 2, whose IoU rows, word options and captions show them
    3: '<img src=x onerror="window.__pwned=1">',
    5: "</script><script>window.__pwned=2</script>",
    9: '"><svg onload=window.__pwned=3>',
}
HOSTILE_TITLE = '</title><img src=x onerror="window.__pwned=4"> /models/<b>sd3</b> & __DATA__'
HOSTILE_PROMPT = '<img src=x onerror="window.__pwned=5"> and <!--<script>'
HOSTILE_ID = "val/<svg onload=window.__pwned=6>.png"
HOSTILE_WORD = "<iframe srcdoc='<script>parent.__pwned=7</script>'>"


@pytest.fixture(scope="module")
def hostile_page(page):
    """The page's data with markup in its class names, captions, sample ids and words, and a title holding markup."""
    data = copy.deepcopy(page[0])
    for c, name in HOSTILE_CLASSES.items():
        data["classes"][c] = name
    for sample in data["samples"]:
        sample["prompt"], sample["id"] = HOSTILE_PROMPT, HOSTILE_ID
        sample["words"] = {c: HOSTILE_WORD for c in sample["words"]}
    path = page[1].with_name("hostile.html")
    path.write_text(render_html(data, HOSTILE_TITLE))
    return data, path


def test_dataset_strings_reach_the_page_as_escaped_text_and_come_back_from_its_json_unchanged(hostile_page):
    data, path = hostile_page
    text = path.read_text()
    for markup in ("<img src=x", "</script><script>", "<svg onload", "<!--", "<iframe", "<b>sd3"):
        assert markup not in text, markup
    payload = re.search(r'<script id="data" type="application/json">(.*?)</script>', text, re.S)
    assert json.loads(payload.group(1)) == data  # every string exactly as it was
    titles = re.findall(r"<title>(.*?)</title>", text) + re.findall(r"<h1>(.*?)</h1>", text)
    assert [html.unescape(title) for title in titles] == [HOSTILE_TITLE] * 2


def test_the_page_in_headless_chromium_shows_markup_in_dataset_strings_as_text_and_runs_none_of_it(
    hostile_page, browser
):
    data, path = hostile_page
    errors = len(browser.console_errors)
    browser.open(path.as_uri())
    browser.wait_for("document.body.dataset.ready === '1'")
    select = (
        "(id, value) => { const s = document.getElementById(id); s.value = value; "
        "s.dispatchEvent(new Event('change')); }"
    )
    browser.evaluate("document.querySelectorAll('#thumbs img')[2].click()")  # the sample with the hostile classes
    names = list(HOSTILE_CLASSES.values())
    assert browser.evaluate("[...document.getElementById('word').options].map(o => o.textContent)") == names
    for k, name in enumerate(names):
        browser.evaluate(f"({select})('word', '{k}')")
        caption = browser.evaluate("document.getElementById('attcaption').textContent")
        assert caption.startswith(f'"{name}" ({HOSTILE_WORD})'), caption
    browser.evaluate(f"({select})('layer', '0')")  # the IoU table drawn again at another layer
    iou_names = browser.evaluate("[...document.querySelectorAll('#iou td:first-child')].map(td => td.textContent)")
    assert set(names) <= set(iou_names)
    assert browser.evaluate("document.getElementById('prompt').textContent") == HOSTILE_PROMPT
    assert browser.evaluate("document.getElementById('sampleid').textContent") == HOSTILE_ID
    assert browser.evaluate("document.querySelectorAll('#thumbs img')[2].title") == HOSTILE_PROMPT
    assert browser.evaluate("[document.title, document.querySelector('h1').textContent]") == [HOSTILE_TITLE] * 2
    assert browser.evaluate("typeof window.__pwned") == "undefined"
    injected = (
        "[document.images.length, document.querySelectorAll('svg').length, "
        "document.querySelectorAll('iframe, b, [onerror], [onload]').length]"
    )
    assert browser.evaluate(injected) == [len(data["samples"]), 2, 0]  # the thumbnails, the two charts, nothing else
    assert browser.console_errors[errors:] == []
