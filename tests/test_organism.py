import numpy as np
import torch

from seg4diff.backbones.backbone import load_backbone
from seg4diff.config import ModelParams, PretrainParams
from seg4diff.organism.colours import caption_colour_agreement, colour_hits, largest_blob_colour
from seg4diff.organism.pipeline import Architecture, OrganismPipeline
from seg4diff.organism.sampling import sample
from seg4diff.training.pretrain import flow_matching_loss, train

WORDS = ["red", "blue", "circle", "square", "and"]
ARCH = Architecture(
    num_layers=2,
    num_attention_heads=2,
    attention_head_dim=8,
    image_size=16,
    text_length=8,
    text_layers=0,
    pooled="mean",
)


def _data(n=32, seed=0):
    """Left half red or blue by caption: a task the text must be read for."""
    rng = np.random.default_rng(seed)
    captions, images = [], torch.full((n, 3, 16, 16), -0.2)
    for i in range(n):
        colour = rng.choice(["red", "blue"])
        captions.append(f"{colour} square")
        images[i, 0 if colour == "red" else 2, :, :8] = 0.9
    return images, captions


def test_short_training_lowers_the_loss_and_round_trips_through_the_loader(tmp_path):
    pipe = OrganismPipeline.build(WORDS, ARCH, seed=0)
    images, captions = _data()
    schedule = PretrainParams(
        steps=60,
        batch_size=16,
        lr=3e-3,
        warmup_steps=5,
        weight_decay=0.0,
        grad_clip=1.0,
        caption_dropout=0.1,
        seed=0,
        log_every=10,
    )
    log = train(pipe, images, captions, schedule, progress=False)
    assert log.losses[-1] < 0.7 * log.losses[0]
    pipe.save_pretrained(tmp_path / "organism")
    backbone = load_backbone(ModelParams(path=str(tmp_path / "organism")))
    assert backbone.family == "organism" and backbone.token_grid(16, 16) == (8, 8)
    noise = torch.randn(images[:4].shape, generator=torch.Generator().manual_seed(1))
    s = torch.full((4,), 0.5)
    with torch.no_grad():
        torch.testing.assert_close(
            flow_matching_loss(backbone.pipe, images[:4], captions[:4], s, noise),
            flow_matching_loss(pipe, images[:4], captions[:4], s, noise),
        )
    encoding = backbone.encode_prompts(["red circle and blue square"])
    assert encoding.positions(0, 0, 10) == [0, 1] and encoding.positions(0, 15, 26) == [3, 4]
    assert [t.token for t in encoding.tokens[0][:5]] == ["red", "circle", "and", "blue", "square"]


def test_training_is_deterministic():
    images, captions = _data(16)
    schedule = PretrainParams(
        steps=5,
        batch_size=8,
        lr=1e-3,
        warmup_steps=1,
        weight_decay=0.0,
        grad_clip=1.0,
        caption_dropout=0.5,
        seed=3,
        log_every=1,
    )
    a, b = OrganismPipeline.build(WORDS, ARCH, seed=0), OrganismPipeline.build(WORDS, ARCH, seed=0)
    assert (
        train(a, images, captions, schedule, progress=False).losses
        == train(b, images, captions, schedule, progress=False).losses
    )


def test_sampler_and_colour_check():
    pipe = OrganismPipeline.build(WORDS, ARCH, seed=0)
    out = sample(pipe, ["red square", "blue circle"], steps=3, guidance=2.0, seed=0)
    assert out.shape == (2, 3, 16, 16) and 0 <= out.min() and out.max() <= 1
    red = np.zeros((16, 16, 3)) + 0.5
    red[2:9, 2:9] = [0.85, 0.18, 0.16]
    red[12:14, 12:14] = [0.18, 0.3, 0.9]  # a smaller blue blob
    assert largest_blob_colour(red, design="colour_shape") == "red"
    captions = ["red circle", "blue square and green circle"]
    agreement, chance = caption_colour_agreement(np.stack([red, red]), captions, "colour_shape")
    assert agreement == 0.5 and chance == (1 / 4 + 2 / 4) / 2
    assert colour_hits(np.stack([red, red]), captions, "colour_shape").tolist() == [1.0, 0.0]


def test_text_layers_bind_words_and_pooled_none_leaves_attention_as_the_only_text_path(tmp_path):
    arch = Architecture(
        num_layers=2,
        num_attention_heads=2,
        attention_head_dim=8,
        image_size=16,
        text_length=8,
        text_layers=1,
        pooled="none",
    )
    pipe = OrganismPipeline.build(WORDS, arch, seed=0)
    with torch.no_grad():
        embeds, pooled = pipe.encode_prompt(["red circle", "blue circle"])
    assert not torch.allclose(embeds[0, 1], embeds[1, 1], atol=1e-3)  # "circle" knows its colour (causal layer)
    torch.testing.assert_close(embeds[0, 0], pipe.encode_prompt(["red square"])[0][0, 0].detach())  # not what follows
    assert pooled.abs().max() == 0
    pipe.save_pretrained(tmp_path / "organism")
    loaded = OrganismPipeline.from_pretrained(tmp_path / "organism")
    assert loaded.pooled == "none" and loaded.text_encoder.config.num_hidden_layers == 1
    with torch.no_grad():
        torch.testing.assert_close(loaded.encode_prompt(["red circle"])[0], embeds[:1])


def test_colour_readers_take_the_shape_designs_palette():
    from seg4diff.data.shapes_vocabulary import SHAPE_PALETTE

    purple = np.zeros((16, 16, 3)) + 0.5
    purple[2:10, 2:10] = np.array(SHAPE_PALETTE["purple"]) / 255
    assert largest_blob_colour(purple, design="shape") == "purple"
    assert largest_blob_colour(purple, design="colour_shape") == "blue"  # that palette has no purple: its nearest
    images, captions = np.stack([purple, purple]), ["purple star and background", "cyan ring and red cross"]
    agreement, chance = caption_colour_agreement(images, captions, design="shape")
    assert agreement == 0.5 and chance == (1 / 6 + 2 / 6) / 2
    assert colour_hits(images, captions, design="shape").tolist() == [1.0, 0.0]
