"""The recorded families' backbones against their own pipelines (tiny FLUX.2, Qwen-Image, Chroma and AuraFlow of the
real classes, offline): a forward built by the backbone is the pipeline's own forward bit for bit, an Euler step
with its velocity is the pipeline's step, its σ schedule is the pipeline's, the pipeline decodes its latents to the
VAE's own reconstruction, and the prompt's tokens sit where the pipeline puts them."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from diffusers.schedulers.scheduling_flow_match_euler_discrete import FlowMatchEulerDiscreteSchedulerOutput
from test_trace_families import FAMILIES, PROMPT

from seg4diff.backbones.backbone import backbone_from_pipeline, pixels_of
from seg4diff.backbones.recorded import RecordedBackbone
from seg4diff.capture.families import forward_arguments

HEIGHT, WIDTH = 32, 16  # AuraFlow's tiny position table is 8 × 8 tokens
PROMPTS = (PROMPT, "a blue dog")  # a tuple: Z-Image rewrites a prompt list in place


def _backbone(name: str) -> RecordedBackbone:
    family = FAMILIES[name]
    pipe = family.build()
    call = {k: v for k, v in family.call.items() if k == "text_encoder_out_layers"}
    backbone = backbone_from_pipeline(pipe, family.call.get("max_sequence_length"), call)
    assert isinstance(backbone, RecordedBackbone) and backbone.family == name
    return backbone


def _pipeline_calls(backbone: RecordedBackbone, steps: int) -> list[tuple[dict, torch.Tensor]]:
    """Returns every transformer call (its keyword arguments, its output) of a seeded `steps`-step generation of
    PROMPTS without classifier-free guidance."""
    calls = []

    def keep(module, args, kwargs, out):
        value = out[0]  # Z-Image's: one tensor per sample
        calls.append((forward_arguments(module, args, kwargs), [v.clone() for v in value] if isinstance(value, list)
                      else value.clone()))  # fmt: skip

    hook = backbone.transformer.register_forward_hook(keep, with_kwargs=True)
    try:
        with torch.no_grad():
            backbone.pipe(
                prompt=list(PROMPTS),
                height=HEIGHT,
                width=WIDTH,
                num_inference_steps=steps,
                output_type="latent",
                generator=torch.Generator().manual_seed(1),
                **backbone.text_length_arguments(),
                **backbone.row.uncond_free,
                **backbone.call_arguments,
            )
    finally:
        hook.remove()
    return calls


def _latent_shape(backbone: RecordedBackbone, channels: int) -> torch.Size:
    return torch.Size((len(PROMPTS), channels, HEIGHT // backbone.vae_scale_factor, WIDTH // backbone.vae_scale_factor))


def _unpacked(backbone: RecordedBackbone, hidden: torch.Tensor) -> torch.Tensor:
    """The pipeline's image input in the backbone's latent layout (batch, channel, h, w)."""
    h, w = HEIGHT // backbone.vae_scale_factor, WIDTH // backbone.vae_scale_factor
    numel = sum(x.numel() for x in hidden) if isinstance(hidden, list) else hidden.numel()
    return backbone.row.unpack(hidden, _latent_shape(backbone, numel // (len(PROMPTS) * h * w)))


@pytest.mark.parametrize("name", FAMILIES)
def test_a_forward_built_by_the_backbone_is_the_pipelines_own_and_its_euler_step_the_pipelines_step(name):
    backbone = _backbone(name)
    image, time = backbone.row.image_input, backbone.row.timestep_input
    calls = _pipeline_calls(backbone, steps=3)
    sigmas = backbone.pipe.scheduler.sigmas
    encoding = backbone.encode_prompts(list(PROMPTS))
    for step in range(2):
        kwargs, out = calls[step]
        latents = _unpacked(backbone, kwargs[image])
        torch.testing.assert_close(backbone.row.pack(latents), kwargs[image], rtol=0, atol=0)
        ours = backbone.transformer_inputs(latents, float(sigmas[step]), encoding)
        torch.testing.assert_close(ours[time], kwargs[time], rtol=0, atol=0)
        with torch.no_grad():
            torch.testing.assert_close(backbone.transformer(**ours)[0], out, rtol=0, atol=0)
            velocity = backbone.velocity(latents, float(sigmas[step]), encoding)
        stepped = latents + (sigmas[step + 1] - sigmas[step]) * velocity  # the flow's Euler step
        following = _unpacked(backbone, calls[step + 1][0][image])
        torch.testing.assert_close(stepped, following, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("name", FAMILIES)
def test_the_backbones_schedule_is_the_pipelines_at_that_image_size(name):
    backbone = _backbone(name)
    steps = 4
    timesteps = [float(kwargs[backbone.row.timestep_input][0]) for kwargs, _ in _pipeline_calls(backbone, steps)]
    tokens = int(np.prod(backbone.token_grid(HEIGHT, WIDTH)))
    sigmas = torch.from_numpy(backbone.sigmas(steps, tokens))
    np.testing.assert_array_equal(backbone.timesteps(sigmas, tokens).numpy(), timesteps)


@pytest.mark.parametrize("name", FAMILIES)
def test_the_pipeline_decodes_the_backbones_latents_to_the_vaes_own_reconstruction(name, monkeypatch):
    """The latents replace a one-step generation's (its step's result: LongCat-Image has no step callback)."""
    backbone = _backbone(name)
    pipe = backbone.pipe
    images = torch.rand(len(PROMPTS), 3, HEIGHT, WIDTH, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        latents = backbone.encode_images(images)
        packed = backbone.row.pack(latents)
        layout = latents if isinstance(packed, list) else packed  # Z-Image keeps (batch, C, h, w), lists per call
        vae_input = (2 * images - 1)[:, :, None] if name == "qwenimage" else 2 * images - 1
        decoded = pipe.vae.decode(pipe.vae.encode(vae_input).latent_dist.mean).sample
        reference = ((decoded[:, :, 0] if name == "qwenimage" else decoded) / 2 + 0.5).clamp(0, 1)
        step = FlowMatchEulerDiscreteSchedulerOutput(prev_sample=layout)  # read as [0] or .prev_sample
        monkeypatch.setattr(pipe.scheduler, "step", lambda *args, **kwargs: step)
        replaced = pipe(
            prompt=list(PROMPTS),
            height=HEIGHT,
            width=WIDTH,
            num_inference_steps=1,
            output_type="pt",
            **backbone.text_length_arguments(),
            **backbone.row.uncond_free,
            **backbone.call_arguments,
        ).images
    torch.testing.assert_close(replaced, reference, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("name", FAMILIES)
def test_the_prompts_tokens_sit_where_the_pipeline_puts_them(name):
    """The backbone's text positions with a character span are the prompt's tokens at the positions the trace test's
    hand count gives (after FLUX.2's 31 template tokens, after AuraFlow's 8 registers), and every prompt's token
    list is as long as the text sequence of the attention."""
    family = FAMILIES[name]
    backbone = _backbone(name)
    encoding = backbone.encode_prompts(list(PROMPTS))
    for tokens in encoding.tokens:
        assert len(tokens) == encoding.prompt_embeds.shape[1] + family.registers
    words = [(pos, tok.token) for pos, tok in enumerate(encoding.tokens[0]) if tok.end > tok.start]
    assert words == [(family.first + i, token) for i, token in enumerate(family.tokens)]
    cat = PROMPT.index("cat")
    assert encoding.positions(0, cat, cat + 3) == [family.first + i for i in family.cat]


def test_an_unknown_pipeline_is_refused_naming_the_supported_ones():
    from seg4diff.backbones.backbone import ModelLoadError

    with pytest.raises(ModelLoadError, match="object is not a supported MM-DiT pipeline .*Flux2Pipeline"):
        backbone_from_pipeline(object())


def test_images_become_the_latents_of_the_store_size():
    backbone = _backbone("qwenimage")
    images = np.zeros((1, HEIGHT, WIDTH, 3), dtype=np.uint8)
    latents = backbone.encode_images(pixels_of(images))
    assert latents.shape[-2:] == (HEIGHT // backbone.vae_scale_factor, WIDTH // backbone.vae_scale_factor)
    assert backbone.token_grid(HEIGHT, WIDTH) == (HEIGHT // 8, WIDTH // 8)


# Lumina 2's joint sequence is [each caption's valid tokens, image]: its batches of prompts of different lengths put
# the image tokens at different places, which the capture refuses (grid unknown), so no stage runs it
STAGE_FAMILIES = [name for name in FAMILIES if name != "lumina2"]
PRESETS = {
    "flux2": "flux2-dev",
    "qwenimage": "qwen-image",
    "chroma": "chroma",
    "auraflow": "auraflow",
    "bria": "bria-3.2",
    "longcat": "longcat-image",
    "ovisimage": "ovis-image",
    "ernieimage": "ernie-image",
    "cogview4": "cogview4",
    "hunyuanimage": "hunyuanimage-2.1",
    "zimage": "z-image",
}


@pytest.mark.parametrize("name", STAGE_FAMILIES)
def test_extract_with_the_family_preset_on_a_tiny_pipeline_keeps_the_class_words_tokens(name, tmp_path):
    """The family's preset end to end through extraction on its tiny pipeline (saved, loaded back from disk; CPU,
    fp32, 32 px): σ is the pipeline's own schedule 8 steps from the end, and the kept tokens are the class words'
    (a character span inside the prompt, the template's tokens never)."""
    from conftest import REPO, prepared_shapes

    from seg4diff.config import load_params
    from seg4diff.data.attention_store import open_attention
    from seg4diff.data.prepared import preparation_settings
    from tasks.extract import extract_range_task, plan_extraction_task

    family = FAMILIES[name]
    family.build().save_pretrained(tmp_path / "model", safe_serialization=True)
    call = {k: list(v) for k, v in family.call.items() if k == "text_encoder_out_layers"}
    length = {"text_length": family.call["max_sequence_length"]} if "max_sequence_length" in family.call else {}
    overrides = {
        "model": {"path": str(tmp_path / "model"), "dtype": "float32", "device": "cpu", "call": call, **length},
        "prepare": {"output": str(tmp_path / "prepared"), "resolution": 32, "label_resolution": 32},
        # the tiny BPEs know only a few whole words: the Shapes class names fall apart into many pieces
        "extract": {"output": str(tmp_path / "attention.zarr"), "batch_size": 2, "diagnostics": False}
        | {"max_tokens": 96},
        "orchestration": {"local_workers": 0},
    }
    params = load_params(REPO / "params.yaml", overrides, [PRESETS[name]])
    settings = preparation_settings(params.data, params.prepare)
    prepared_shapes(tmp_path / "prepared", ["val"], 32, 32, seed=4, settings=settings, num_val=3)
    plan = plan_extraction_task.fn(params)
    backbone = backbone_from_pipeline(family.build(), length.get("text_length"), call)
    grid = backbone.token_grid(32, 32)
    assert plan["sigmas"] == [pytest.approx(float(backbone.sigmas(28, grid[0] * grid[1])[28 - 8]), abs=1e-6)]
    for start, stop in plan["ranges"]:
        extract_range_task.fn(params, start, stop, plan["sigmas"], plan["layers"])
    store = open_attention(tmp_path / "attention.zarr")
    assert store.sizes["layer"] == sum(getattr(backbone.transformer.config, key) for key in family.layers)
    assert (store.sizes["y"], store.sizes["x"]) == grid
    kept = store.token_position.values >= 0
    assert kept.any()
    prompts = [str(p) for p in store.prompt.values]
    tokens = backbone.prompt_tokens(prompts)
    for sample, prompt in enumerate(prompts):
        positions = store.token_position.values[sample][kept[sample]]
        assert all(tokens[sample][p].end > tokens[sample][p].start for p in positions)  # prompt characters only
        assert "background" in prompt.split(" ")  # the preset prompts background as a word


@pytest.mark.parametrize("name", STAGE_FAMILIES)
def test_one_magnet_step_on_a_family_moves_only_its_image_stream_lora(name, tmp_path):
    """MAGNET's step through the family's backbone (its recorded forwards, with gradients): the flow and mask losses
    are finite, every image-stream adapter moves, and nothing else of the transformer does."""
    from conftest import prepared_shapes

    from seg4diff.config import FinetuneParams, PromptParams
    from seg4diff.data.prepared import open_prepared
    from seg4diff.training.magnet import MagnetConfig, train_magnet

    backbone = _backbone(name)
    root = prepared_shapes(tmp_path, ["train", "val"], 32, 32, seed=2, num_train=2, num_val=2)
    before = {k: v.clone() for k, v in backbone.transformer.state_dict().items()}
    settings = FinetuneParams(rank=2, alpha=2, steps=1, batch_size=2, warmup_steps=1, validate_every=100, lr=1e-2)
    config = MagnetConfig.from_params(settings, PromptParams(separator=" ", background="word"), 0, 0.5, name)
    train, val = open_prepared(root / "train.zarr"), open_prepared(root / "val.zarr")
    train_magnet(backbone, train, val, config, tmp_path / "work", progress=False)
    after = backbone.transformer.state_dict()
    base = {k.replace(".base_layer", ""): v for k, v in after.items() if "lora_" not in k}
    assert base.keys() == before.keys() and all(torch.equal(before[k], base[k]) for k in before)
    moved = [k for k, v in after.items() if "lora_B" in k and v.abs().sum() > 0]
    assert moved and len(moved) == len([k for k in after if "lora_B" in k])


@pytest.mark.parametrize("name", STAGE_FAMILIES)
def test_the_causal_table_of_a_family_perturbs_its_generations_and_flow_losses(name, tmp_path):
    """The causal stage's measurement through the family's pipeline (its own generation, CFG as it runs it) and
    backbone (flow losses): the spatial mean and the word shuffle of two layers change the attention (size > 0),
    every metric is finite; Qwen-Image's captions and its negative differ in text length."""
    from conftest import prepared_shapes

    from seg4diff.config import CausalParams
    from seg4diff.data.prepared import open_prepared
    from seg4diff.evaluation.causal import causal_table
    from seg4diff.prompts import PromptStyle

    backbone = _backbone(name)
    prepared = open_prepared(prepared_shapes(tmp_path, ["val"], 32, 32, seed=2, num_val=2) / "val.zarr")
    # CogView4's GLM sees its left padding, so a prompt's text rows depend on its batch: no word_shuffle there
    kinds = ["mean"] if name == "cogview4" else ["mean", "word_shuffle"]
    settings = CausalParams(
        perturbations=kinds, permutations=1, doses=[0.5], calibration_samples=2, captions=2,
        batch_size=2, generation_steps=2, flow_samples=2, flow_sigmas=[0.5], bootstrap_resamples=100,
    )  # fmt: skip
    style = PromptStyle("gt_classes", " ", "word", "all")
    table, _ = causal_table(backbone, list(PROMPTS), prepared, style, settings, [0, 1], progress=False, expert_layer=0)
    size = table[table.metric == "perturbation_l1"]
    assert len(size) == 2 * len(kinds) * 2 and (size.value > 0).all()  # layers × perturbations × (full, dose 0.5)
    assert np.isfinite(table[table.metric == "flow_loss_increase"].value).all()
