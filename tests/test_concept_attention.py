"""ConceptAttention: the concept stream's output-space scores equal a naive recomputation from each layer's inputs,
the transformer's output (and a whole generation) is unchanged by it, and padded concepts change nothing."""

from pathlib import Path

import pytest
import torch
from family_cases.group_b import tiny_qwenimage
from family_cases.sd3_flux import _flux_inputs, _sd3_inputs
from tiny_pipelines import tiny_flux_transformer, tiny_sd3_transformer

import seg4diff
from seg4diff.backbones.backbone import backbone_from_pipeline
from seg4diff.capture.concepts import concept_attention
from seg4diff.capture.families import family_of
from seg4diff.capture.perturb import perturb_attention
from seg4diff.evaluation.model_readouts import concept_embeddings, image_features
from seg4diff.organism.pipeline import OrganismPipeline
from seg4diff.organism.sampling import sample
from seg4diff.testing.reference import naive_concept_scores

BUILDS = {
    "sd3": (tiny_sd3_transformer, _sd3_inputs),
    "sd35": (lambda: tiny_sd3_transformer(sd35=True), _sd3_inputs),
    "flux": (tiny_flux_transformer, _flux_inputs),
}


def _concepts(transformer, count: int = 3, batch: int = 2) -> torch.Tensor:
    g = torch.Generator().manual_seed(1)
    return torch.randn(batch, count, transformer.config.joint_attention_dim, generator=g)


def _built(name):
    torch.manual_seed(0)
    build, inputs = BUILDS[name]
    transformer = build().eval()
    return transformer, inputs(transformer)


@pytest.mark.parametrize("name", list(BUILDS))
def test_scores_equal_the_naive_concept_stream(name):
    transformer, inputs = _built(name)
    concepts = _concepts(transformer)
    with torch.no_grad(), concept_attention(transformer, concepts) as readout:
        transformer(**inputs)
    reference = naive_concept_scores(transformer, inputs, concepts)
    assert sorted(readout.scores) == sorted(reference) == list(range(len(transformer.transformer_blocks)))
    for layer, expected in reference.items():
        got = readout.scores[layer].double()
        assert got.shape == (2, 3, inputs_image_tokens(inputs))
        assert torch.allclose(got, expected, rtol=1e-4, atol=1e-5 * float(expected.abs().max())), layer
        assert expected.abs().max() > 0


def inputs_image_tokens(inputs) -> int:
    hidden = inputs["hidden_states"]
    return hidden.shape[1] if hidden.ndim == 3 else hidden.shape[-2] * hidden.shape[-1] // 4


@pytest.mark.parametrize("name", list(BUILDS))
def test_output_is_unchanged_bit_for_bit(name):
    transformer, inputs = _built(name)
    with torch.no_grad():
        stock = transformer(**inputs)[0]
        with concept_attention(transformer, _concepts(transformer)) as readout:
            read = transformer(**inputs)[0]
    assert readout.scores and torch.equal(stock, read)


def test_a_generation_is_unchanged_and_every_step_is_read():
    """A whole denoising loop (every step a forward) makes the same image; the scores are the last step's."""
    transformer, inputs = _built("sd3")
    concepts = _concepts(transformer)

    def generate():
        latents = inputs["hidden_states"].clone()
        for t in (900.0, 600.0, 300.0):
            step = {**inputs, "hidden_states": latents, "timestep": torch.tensor([t, t])}
            latents = latents - 0.3 * transformer(**step)[0]
        return latents

    with torch.no_grad():
        stock = generate()
        with concept_attention(transformer, concepts) as readout:
            read = generate()
    assert torch.equal(stock, read) and readout.forwards == 3 and len(readout.scores) == 3


def test_padded_concepts_change_nothing():
    transformer, inputs = _built("sd3")
    concepts = _concepts(transformer, count=2)
    padded = torch.cat([concepts, torch.randn(2, 2, concepts.shape[-1])], 1)
    mask = torch.tensor([[True, True, False, False], [True, True, False, False]])
    with torch.no_grad():
        with concept_attention(transformer, concepts) as plain:
            transformer(**inputs)
        with concept_attention(transformer, padded, mask) as masked:
            transformer(**inputs)
    for layer, scores in plain.scores.items():
        assert torch.allclose(masked.scores[layer][:, :2], scores, rtol=1e-5, atol=1e-6)


def test_inside_a_perturbation_the_concepts_read_the_perturbed_layer():
    """The concept scores of a perturbed layer use that layer's perturbed image outputs."""
    transformer, inputs = _built("sd3")
    concepts = _concepts(transformer)
    with torch.no_grad():
        with concept_attention(transformer, concepts) as stock:
            transformer(**inputs)
        with perturb_attention(transformer, 1, "mean"), concept_attention(transformer, concepts) as edited:
            transformer(**inputs)
    assert torch.equal(stock.scores[0], edited.scores[0])
    assert not torch.allclose(stock.scores[1], edited.scores[1])


def test_a_family_without_that_text_stream_is_refused():
    with pytest.raises(TypeError, match="SD3's and FLUX.1's text-stream layers"):
        with concept_attention(tiny_qwenimage(), torch.zeros(1, 1, 8)):
            pass


def test_the_shipped_organism_generates_the_same_image_with_its_class_names_as_concepts():
    """The readout as the readouts stage runs it (class names encoded alone, background last) around the organism's
    own sampler (guided, two forwards a step): the generated image is the same bit for bit."""
    pipe = OrganismPipeline.from_pretrained(Path(seg4diff.__file__).parent / "assets" / "organism")
    concepts = concept_embeddings(backbone_from_pipeline(pipe), ["red circle", "blue square", "background"])[None]
    caption = ["red circle and blue square"]
    stock = sample(pipe, caption, steps=4, seed=3)
    with concept_attention(pipe.transformer, concepts) as readout:
        read = sample(pipe, caption, steps=4, seed=3)
    assert torch.equal(stock, read) and readout.forwards == 8
    assert readout.scores[2].shape == (1, 3, 16 * 16) and torch.isfinite(readout.scores[2]).all()


@pytest.mark.parametrize("name", ["sd3", "flux"])
def test_the_probe_reads_the_image_tokens_any_layer_outputs(name):
    """Every layer, FLUX's single-stream ones included (the rehearsal's expert can be one): the image half of the
    block's output, as the next block receives it."""
    transformer, inputs = _built(name)
    blocks = family_of(transformer).blocks(transformer)
    for layer in range(len(blocks)):
        received = {}
        following = blocks[layer + 1] if layer + 1 < len(blocks) else None
        handle = following and following.register_forward_pre_hook(
            lambda m, a, k: received.update(image=k["hidden_states"]), with_kwargs=True
        )
        with torch.no_grad(), image_features(transformer, layer) as seen:
            transformer(**inputs)
        if handle:
            handle.remove()
            if layer + 1 != len(transformer.transformer_blocks):  # FLUX joins text and image before its single layers
                assert torch.equal(seen["features"], received["image"]), layer
        assert seen["features"].shape == (2, inputs_image_tokens(inputs), transformer.inner_dim), layer
