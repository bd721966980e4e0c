import shutil

import numpy as np
import pytest
import torch
from tiny_pipelines import tiny_flux_pipeline, tiny_sd3_pipeline

from seg4diff.backbones.backbone import ModelLoadError, backbone_from_pipeline, load_backbone, model_digest
from seg4diff.config import ModelParams
from seg4diff.errors import ConfigError

PROMPT = "red circle background potted-plant"
SPANS = {"red circle": (0, 10), "background": (11, 21), "potted-plant": (22, 34)}


def _text(tokens, encoder):
    return "".join(t.token for t in tokens if t.encoder == encoder).replace("</w>", "").replace("▁", "")


@pytest.mark.parametrize("name,builder", [("sd3", tiny_sd3_pipeline), ("flux", tiny_flux_pipeline)])
def test_pipeline_round_trips_through_the_loader(tiny_model_dirs, name, builder):
    backbone = load_backbone(ModelParams(path=str(tiny_model_dirs[name]), text_length=24))
    reference = backbone_from_pipeline(builder(), text_length=24)  # same seed: same weights before saving
    assert backbone.family == ("flux" if name == "flux" else "sd3")
    a, b = backbone.encode_prompts([PROMPT]), reference.encode_prompts([PROMPT])
    torch.testing.assert_close(a.prompt_embeds, b.prompt_embeds)
    torch.testing.assert_close(a.pooled, b.pooled)
    images = torch.rand(1, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    latents = backbone.encode_images(images)
    torch.testing.assert_close(latents, reference.encode_images(images))
    out = backbone.transformer(**backbone.transformer_inputs(latents, 0.5, a))[0]
    ref = reference.transformer(**reference.transformer_inputs(latents, 0.5, b))[0]
    torch.testing.assert_close(out, ref)
    assert backbone.token_grid(32, 32) == (8, 8)


def test_sd3_token_offsets_map_class_names_to_clip_and_t5_positions(tiny_model_dirs):
    backbone = load_backbone(ModelParams(path=str(tiny_model_dirs["sd3"]), text_length=24))
    enc = backbone.encode_prompts([PROMPT, "blue square"])
    assert enc.prompt_embeds.shape[1] == 77 + 24 == len(enc.tokens[0])
    # CLIP: <bos> red circle background p o t t e d - p l a n t <eos>; T5: ▁red ▁circle ▁back ground ▁ p o t ...
    assert enc.positions(0, *SPANS["red circle"]) == [1, 2, 77, 78]
    assert enc.positions(0, *SPANS["background"]) == [3, 79, 80]
    plant = enc.positions(0, *SPANS["potted-plant"])
    clip = [p for p in plant if p < 77]  # p o t t e d - p l an t: sub-words, contiguous after "background"
    assert clip == list(range(4, 15)) and len(plant) > len(clip)
    for word, span in SPANS.items():
        tokens = [enc.tokens[0][p] for p in enc.positions(0, *span)]
        assert _text(tokens, "clip") == word.replace(" ", "") == _text(tokens, "t5")
    assert enc.positions(1, 0, 4) == [1, 77]  # "blue": one CLIP token and one T5 token


def test_flux_token_offsets_are_t5_positions(tiny_model_dirs):
    backbone = load_backbone(ModelParams(path=str(tiny_model_dirs["flux"]), text_length=24))
    enc = backbone.encode_prompts([PROMPT])
    assert enc.prompt_embeds.shape[1] == 24
    assert enc.positions(0, *SPANS["background"]) == [2, 3]
    for word, span in SPANS.items():
        assert _text([enc.tokens[0][p] for p in enc.positions(0, *span)], "t5") == word.replace(" ", "")


def test_sigmas_follow_the_shifted_schedule(tiny_model_dirs):
    backbone = load_backbone(ModelParams(path=str(tiny_model_dirs["sd3"])))
    sigmas = backbone.sigmas(28, 1024)
    sigma_min = 3 * 0.001 / (1 + 2 * 0.001)  # the training schedule's last sigma, already shifted
    plain = 1 - 8 * (1 - sigma_min) / 27  # 28 timesteps linear from 1 to sigma_min, then shifted by 3
    assert sigmas[8] == pytest.approx(3 * plain / (1 + 2 * plain), abs=1e-4)
    assert len(sigmas) == 28 and sigmas[0] == pytest.approx(1.0)


def test_missing_directory_names_path_and_param(tmp_path):
    with pytest.raises(ModelLoadError, match=r"model directory '.*/absent' does not exist: set model.path"):
        load_backbone(ModelParams(path=str(tmp_path / "absent")))


def test_hub_id_offline_says_so(monkeypatch, tmp_path):
    monkeypatch.setenv("HF_HOME", str(tmp_path))
    with pytest.raises(ModelLoadError, match=r"cannot load model 'nobody/no-such-model': .*local_files_only is true"):
        load_backbone(ModelParams(path="nobody/no-such-model"))


def test_model_digest_follows_the_weights_not_the_path_or_mtime(tiny_model_dirs, tmp_path):
    original = ModelParams(path=str(tiny_model_dirs["sd3"]))
    copy = tmp_path / "copy"
    shutil.copytree(tiny_model_dirs["sd3"], copy)
    assert model_digest(ModelParams(path=str(copy))) == model_digest(original)
    weights = next((copy / "transformer").glob("*.safetensors"))
    data = bytearray(weights.read_bytes())
    data[-1] ^= 1  # one bit of the last tensor: a model retrained in place
    weights.write_bytes(bytes(data))
    assert model_digest(ModelParams(path=str(copy))) != model_digest(original)
    assert (
        model_digest(ModelParams(path="stabilityai/stable-diffusion-3-medium-diffusers"))
        == "stabilityai/stable-diffusion-3-medium-diffusers"
    )


def test_steps_are_counted_from_the_end_as_the_authors_do(tiny_model_dirs):
    """The authors noise at timesteps[-8] of a 28-step schedule: σ 0.5151 for SD3 (shift 3), not index 8 (σ 0.877)."""
    from seg4diff.capture.extract import resolve_sigmas
    from seg4diff.config import ExtractParams

    sd3 = load_backbone(ModelParams(path=str(tiny_model_dirs["sd3"])))
    params = ExtractParams(sigmas=None, steps_from_end=[8], num_inference_steps=28)
    assert resolve_sigmas(sd3, params, 4096) == [pytest.approx(0.5151, abs=1e-4)]
    assert sd3.sigmas(28, 4096)[8] == pytest.approx(0.8774, abs=1e-4)  # what counting from the start gave
    # FLUX: dynamic shift mu for the image token count, σ = e^mu / (e^mu + 1/t − 1) on t = linspace(1, 1/28, 28)
    flux = load_backbone(ModelParams(path=str(tiny_model_dirs["flux"])))
    for tokens in (1024, 4096):
        mu = 0.5 + (1.15 - 0.5) * (tokens - 256) / (4096 - 256)
        t = 1 - 20 * (1 - 1 / 28) / 27
        expected = np.exp(mu) / (np.exp(mu) + 1 / t - 1)
        assert resolve_sigmas(flux, params, tokens) == [pytest.approx(expected, abs=1e-5)]
    with pytest.raises(ConfigError, match=r"extract.steps_from_end \[0\] outside a 28-step schedule"):
        resolve_sigmas(sd3, ExtractParams(sigmas=None, steps_from_end=[0]), 4096)


def test_sd3_without_t5_as_the_authors_and_clip_columns(tiny_model_dirs):
    """text_encoder_3=None: 77 CLIP + 77 zero rows in the joint sequence; with prompt.columns clip a class's map reads
    only its CLIP token columns."""
    from seg4diff.prompts import PromptStyle, build_prompt, token_slots

    backbone = load_backbone(ModelParams(path=str(tiny_model_dirs["sd3"]), t5=False))
    assert backbone.pipe.text_encoder_3 is None
    encoding = backbone.encode_prompts([PROMPT])
    assert encoding.prompt_embeds.shape[1] == 77 + 77
    assert encoding.prompt_embeds[0, 77:].abs().sum() == 0  # the zero rows
    inputs = backbone.transformer_inputs(backbone.encode_images(torch.zeros(1, 3, 32, 32)), 0.5, encoding)
    assert inputs["encoder_hidden_states"].shape[1] == 154
    present = np.array([True, True])
    prompt, spans = build_prompt(
        PromptStyle("gt_classes", " ", "word", "clip"), present, ["red circle", "background"], ""
    )
    encoding = backbone.encode_prompts([prompt])
    slots = token_slots(encoding, 0, spans, "class", 16, "s", "clip")
    kept = slots.position[slots.position >= 0]
    assert len(kept) and (kept < 77).all() and set(slots.encoder[: len(kept)]) == {"clip"}
    with_t5 = load_backbone(ModelParams(path=str(tiny_model_dirs["sd3"]), text_length=16))
    both = token_slots(with_t5.encode_prompts([prompt]), 0, spans, "class", 16, "s", "all")
    assert set(both.encoder[both.position >= 0]) == {"clip", "t5"}
    with pytest.raises(
        ConfigError, match=r"prompt.columns is 'clip' but this model's text positions come from \['t5'\]"
    ):
        token_slots(
            load_backbone(ModelParams(path=str(tiny_model_dirs["flux"]))).encode_prompts([prompt]),
            0,
            spans,
            "class",
            16,
            "s",
            "clip",
        )
    with pytest.raises(ModelLoadError, match="model.t5 is false but .* is a FluxPipeline"):
        load_backbone(ModelParams(path=str(tiny_model_dirs["flux"]), t5=False))


@pytest.mark.parametrize("name", ["sd3", "flux"])
def test_velocity_is_the_transformer_output_in_the_latents_layout(tiny_model_dirs, name):
    """Flow losses compare the prediction with noise − x0: FLUX's packed 2×2 patches must come back to (B, C, H, W)."""
    from diffusers import FluxPipeline

    backbone = load_backbone(ModelParams(path=str(tiny_model_dirs[name])))
    latents = backbone.encode_images(torch.rand(2, 3, 32, 32, generator=torch.Generator().manual_seed(0)))
    encoding = backbone.encode_prompts(["red circle", "blue square"])
    with torch.no_grad():
        raw = backbone.transformer(**backbone.transformer_inputs(latents, 0.5, encoding))[0]
        velocity = backbone.velocity(latents, 0.5, encoding)
    assert velocity.shape == latents.shape
    batch, channels, height, width = latents.shape
    packed = FluxPipeline._pack_latents(velocity, batch, channels, height, width) if name == "flux" else velocity
    torch.testing.assert_close(packed, raw)  # the same numbers, only laid out as the latents
    if name == "flux":  # patch (0, 0) of the packed sequence holds the 2×2 latent pixels of its channels, channel-major
        torch.testing.assert_close(raw[:, 0].reshape(batch, channels, 2, 2), velocity[:, :, :2, :2])
