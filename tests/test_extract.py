import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import torch
from conftest import REPO, prepared_shapes

from seg4diff.backbones.backbone import load_backbone
from seg4diff.backbones.noise import sample_noise
from seg4diff.capture.attention import capture_attention
from seg4diff.capture.extract import extract_range, open_or_create, plan_ranges, resolve_sigmas
from seg4diff.config import ExtractParams, ModelParams
from seg4diff.data.attention_store import StoreLayout, completed, open_attention
from seg4diff.data.prepared import open_prepared
from seg4diff.errors import ConfigError
from seg4diff.prompts import PromptStyle, build_prompt

NAMES = ["background", "red circle", "blue square", "potted-plant"]


def test_prompts_and_class_spans():
    present = np.array([True, False, True, True])
    prompt, spans = build_prompt(PromptStyle("gt_classes", " ", "word", "all"), present, NAMES, "")
    assert prompt == "background blue square potted"
    assert [(s.class_id, prompt[s.start : s.end]) for s in spans] == [
        (0, "background"),
        (2, "blue square"),
        (3, "potted"),
    ]
    prompt, spans = build_prompt(PromptStyle("vocabulary", " ", "word", "all"), present, NAMES, "")
    assert prompt == "background red circle blue square potted" and len(spans) == 4
    prompt, spans = build_prompt(
        PromptStyle("caption", " ", "word", "all"), present, NAMES, "a blue square and a red circle, not a red square"
    )
    assert [(s.class_id, prompt[s.start : s.end]) for s in spans] == [(2, "blue square"), (1, "red circle")]


def test_ranges_are_batch_aligned_and_cover_everything():
    assert plan_ranges(10, 4, 1) == [(0, 10)]
    assert plan_ranges(10, 4, 2) == [(0, 8), (8, 10)]
    assert plan_ranges(10, 4, 5) == [(0, 4), (4, 8), (8, 10)]
    assert plan_ranges(0, 4, 2) == []


@pytest.fixture(scope="module")
def prepared_val(tmp_path_factory):
    return prepared_shapes(tmp_path_factory.mktemp("shapes"), ["val"], 32, 32, seed=5, num_val=6) / "val.zarr"


PARAMS = ExtractParams(sigmas=[0.5, 0.8], max_tokens=48, batch_size=2, seed=3)
STYLE = PromptStyle("gt_classes", " ", "word", "all")  # Seg4Diff's: names joined by spaces, background a word


def _extract(model_dir, prepared_path, out, ranges, params=PARAMS):
    backbone = load_backbone(ModelParams(path=str(model_dir), text_length=24))
    prepared = open_prepared(prepared_path)
    sigmas = resolve_sigmas(backbone, params, 64)
    layout = StoreLayout(
        6, [0, 1, 2], [0, 1], sigmas, params.max_tokens, (8, 8), tuple(params.directions), params.diagnostics
    )
    open_or_create(out, layout, {"fingerprint": "test"})
    for start, stop in ranges:
        extract_range(backbone, prepared, out, start, stop, sigmas, [0, 1, 2], params, STYLE)
    return backbone, prepared


def test_store_holds_what_a_direct_capture_gives(tiny_model_dirs, prepared_val, tmp_path):
    backbone, prepared = _extract(tiny_model_dirs["sd3"], prepared_val, tmp_path / "a.zarr", [(0, 6)])
    store = open_attention(tmp_path / "a.zarr")
    assert completed(tmp_path / "a.zarr").all()
    assert store.image_to_text.dims == ("sample", "layer", "head", "timestep", "token", "y", "x")
    assert store.image_to_text.dtype == np.float16 and list(store.sigma.values) == [0.5, 0.8]
    assert list(store.timestep.values) == [500.0, 800.0] and store.sigma.dims == (
        "timestep",
    )  # what the transformer got
    # independent recomputation of sample 4 at sigma 0.8, layer 2
    row = prepared.isel(sample=4).load()
    prompt = str(store.prompt.values[4])
    names = [str(n) for n in prepared.class_name.values]
    assert prompt == " ".join(names[k] for k in np.flatnonzero(row.present.values))
    image = torch.from_numpy(row.image.values).permute(2, 0, 1)[None].float() / 255
    latents = backbone.encode_images(image)
    noise = sample_noise(latents.shape[1:], PARAMS.seed, 4)[None]
    encoding = backbone.encode_prompts([prompt])
    positions = store.token_position.values[4]
    kept = positions[positions >= 0]
    with (
        torch.no_grad(),
        capture_attention(backbone.transformer, [2], text_tokens=kept.tolist(), diagnostics=True) as cap,
    ):
        backbone.transformer(**backbone.transformer_inputs(0.8 * noise + 0.2 * latents, 0.8, encoding))
    expected = cap.image_to_text.values[0, 0]  # (head, image_token, token)
    got = store.image_to_text.sel(layer=2, timestep=800.0).isel(sample=4).values[:, : len(kept)]
    np.testing.assert_allclose(got.reshape(2, len(kept), 64).transpose(0, 2, 1), expected, atol=2e-3)
    assert (store.image_to_text.isel(sample=4).values[..., len(kept) :, :, :] == 0).all()  # empty slots
    mass = store.image_to_text_mass.sel(layer=2, timestep=800.0).isel(sample=4).values.reshape(2, 64)
    np.testing.assert_allclose(mass, cap.diagnostic("image_to_text_mass").values[0, 0], atol=1e-5)
    assert np.all(mass >= expected.sum(-1) - 1e-3)  # all text keys hold at least the kept ones' mass
    classes = store.token_class.values[4][: len(kept)]
    assert set(classes) == set(np.flatnonzero(row.present.values))  # every token belongs to a present class
    text = "".join(store.token_text.values[4][store.token_encoder.values[4] == "clip"]).replace("</w>", "")
    assert text == prompt.replace(" ", "")


def test_result_is_identical_whatever_the_ranges(tiny_model_dirs, prepared_val, tmp_path):
    _extract(tiny_model_dirs["sd3"], prepared_val, tmp_path / "one.zarr", plan_ranges(6, 2, 1))
    _extract(tiny_model_dirs["sd3"], prepared_val, tmp_path / "three.zarr", reversed(plan_ranges(6, 2, 3)))
    one, three = open_attention(tmp_path / "one.zarr").load(), open_attention(tmp_path / "three.zarr").load()
    assert one.identical(three)


def test_same_fingerprint_resumes_and_recomputes_nothing(tiny_model_dirs, prepared_val, tmp_path):
    out = tmp_path / "r.zarr"
    _extract(tiny_model_dirs["sd3"], prepared_val, out, [(0, 4)])
    assert completed(out).tolist() == [True] * 4 + [False] * 2
    backbone = load_backbone(ModelParams(path=str(tiny_model_dirs["sd3"]), text_length=24))
    assert extract_range(backbone, open_prepared(prepared_val), out, 0, 6, [0.5, 0.8], [0, 1, 2], PARAMS, STYLE) == 2
    assert extract_range(backbone, open_prepared(prepared_val), out, 0, 6, [0.5, 0.8], [0, 1, 2], PARAMS, STYLE) == 0


KILL_SCRIPT = """
import sys
sys.path.insert(0, {tests!r})
from pathlib import Path
from test_extract import PARAMS, _extract
_extract(Path({model!r}), Path({prepared!r}), Path({out!r}), [(0, 6)], PARAMS.model_copy(update={{"batch_size": 1}}))
"""


@pytest.mark.slow
def test_kill_minus_9_then_resume_gives_the_uninterrupted_store(tiny_model_dirs, prepared_val, tmp_path):
    reference = tmp_path / "ref.zarr"
    _extract(tiny_model_dirs["sd3"], prepared_val, reference, [(0, 6)], PARAMS.model_copy(update={"batch_size": 1}))
    out = tmp_path / "killed.zarr"
    script = KILL_SCRIPT.format(
        tests=str(REPO / "tests"), model=str(tiny_model_dirs["sd3"]), prepared=str(prepared_val), out=str(out)
    )
    process = subprocess.Popen([sys.executable, "-c", script], cwd=REPO, env={**os.environ, "TQDM_DISABLE": "1"})
    deadline = time.time() + 120
    while time.time() < deadline and process.poll() is None:
        if (out / "complete" / "zarr.json").exists() and completed(out).sum() >= 2:
            break
        time.sleep(0.05)
    os.kill(process.pid, signal.SIGKILL)
    process.wait()
    done_at_kill = completed(out)
    assert done_at_kill.sum() < 6, "the process finished before it could be killed"
    _extract(tiny_model_dirs["sd3"], prepared_val, out, [(0, 6)], PARAMS.model_copy(update={"batch_size": 1}))
    assert open_attention(out).load().identical(open_attention(reference).load())


def test_a_failure_names_the_split_and_samples(tiny_model_dirs, prepared_val, tmp_path):
    tight = PARAMS.model_copy(update={"max_tokens": 3})
    with pytest.raises(
        ConfigError,
        match=r"^extract: split 'val', samples \[0, 1\]: sample val/0: \d+ tokens to keep but extract.max_tokens is 3: "
        r"raise",
    ):
        _extract(tiny_model_dirs["sd3"], prepared_val, tmp_path / "t.zarr", [(0, 6)], tight)
    assert not completed(tmp_path / "t.zarr").any()  # nothing marked done


def test_storage_plan_counts_bytes_before_writing_and_refuses_what_cannot_fit(
    tiny_model_dirs, prepared_val, tmp_path, monkeypatch
):
    from collections import namedtuple

    from seg4diff.capture.extract import kept_token_counts, storage_plan

    layout = StoreLayout(6, [0, 1, 2], [0, 1], [0.5, 0.8], 48, (8, 8), ("image_to_text", "text_to_image"), True)
    # per sample: 2 directions × (3 layers × 2 heads × 2 σ) planes × tokens × 64 pixels + diagnostics, float16
    assert layout.sample_bytes(5) == 2 * (2 * 12 * 5 * 64 + 2 * 12 * 64 + 2 * 12 * 5)
    backbone = load_backbone(ModelParams(path=str(tiny_model_dirs["sd3"]), text_length=24))
    counts = kept_token_counts(backbone, open_prepared(prepared_val), 6, PARAMS, STYLE)
    _extract(tiny_model_dirs["sd3"], prepared_val, tmp_path / "a.zarr", [(0, 6)])
    store = open_attention(tmp_path / "a.zarr")
    np.testing.assert_array_equal(counts, (store.token_position.values >= 0).sum(-1))  # what extraction then keeps
    plan = storage_plan(layout, counts, tmp_path / "new.zarr")
    assert plan["expected_gb"] * 1e9 == pytest.approx(sum(layout.sample_bytes(c) for c in counts))
    assert plan["expected_gb"] < plan["upper_bound_gb"] and plan["free_gb"] > 0
    usage = namedtuple("usage", "total used free")
    monkeypatch.setattr("shutil.disk_usage", lambda path: usage(10**6, 10**6 - 1000, 1000))
    with pytest.raises(
        ConfigError,
        match=r"^extraction would write about .* GB to .* but 0.0 GB are free: keep less \(extract.head_mean",
    ):
        storage_plan(layout, counts, tmp_path / "new.zarr")
