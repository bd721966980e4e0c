"""Interventions on the same layer stack: a capture inside (or around) a perturbation records the attention the layer
used (the naive softmax with its image×text layer perturbed), the output is the perturbation's, and leaving puts the
stock processors back — in any nesting order, on error, and when contexts are left out of order."""

import contextlib

import pytest
import torch
from test_attention_capture import TEXT, _flux_inputs, _sd3_inputs
from tiny_pipelines import tiny_flux_transformer, tiny_sd3_transformer

from seg4diff.capture.attention import capture_attention
from seg4diff.capture.families import FAMILIES, family_of, joint_attention_modules
from seg4diff.capture.intervention import intervene, interventions_on
from seg4diff.capture.perturb import perturb, perturb_attention
from seg4diff.testing.reference import naive_flux_attention, naive_sd3_attention

SEED = 3
EXACT = {"atol": 0.0, "rtol": 0.0}
CASES = {  # name → (build, inputs, layer, token grid)
    "sd3": (tiny_sd3_transformer, _sd3_inputs, 1, (8, 8)),
    "sd35_dual_attention": (lambda: tiny_sd3_transformer(sd35=True), _sd3_inputs, 0, (8, 8)),
    "flux_double_stream": (tiny_flux_transformer, _flux_inputs, 1, (6, 6)),
    "flux_single_stream": (tiny_flux_transformer, _flux_inputs, 3, (6, 6)),
}


def _build(name):
    build, make_inputs, layer, grid = CASES[name]
    torch.manual_seed(0)
    transformer = build().eval()
    return transformer, make_inputs(transformer), layer, grid


def _run(transformer, inputs, layer, contexts):
    """Returns (transformer output, the layer's (kwargs, output), what each context yielded) with `contexts` nested
    in the order given."""
    seen = {}
    attn = joint_attention_modules(transformer)[layer]
    handle = attn.register_forward_hook(lambda m, a, k, out: seen.update(kwargs=k, out=out), with_kwargs=True)
    try:
        with torch.no_grad(), contextlib.ExitStack() as stack:
            yielded = [stack.enter_context(context()) for context in contexts]
            output = transformer(**inputs)[0]
    finally:
        handle.remove()
    return output, seen, yielded


def _naive(name, attn, kwargs):
    """Returns the naive (batch, head, query, key) joint probabilities and the (image, text) slices, no library code."""
    if name.startswith("flux"):
        probs = naive_flux_attention(
            attn, kwargs["hidden_states"], kwargs.get("encoder_hidden_states"), kwargs["image_rotary_emb"]
        )
        return probs, slice(TEXT, None), slice(0, TEXT)
    n_image = kwargs["hidden_states"].shape[1]
    return (
        naive_sd3_attention(attn, kwargs["hidden_states"], kwargs["encoder_hidden_states"]),
        slice(0, n_image),
        slice(n_image, None),
    )


def _naive_perturbed(probs, image, text, grid, kind):
    """Returns the naive joint probabilities with the image-query × text-key layer replaced by its perturbation."""
    permutation = torch.randperm(TEXT, generator=torch.Generator().manual_seed(SEED))
    replaced = probs.clone()
    replaced[:, :, image, text] = perturb(probs[:, :, image, text], grid, kind, 1.0, permutation)
    return replaced


def _outputs(out):
    return out if isinstance(out, tuple) else (out,)


@pytest.mark.parametrize("kind", ["blur", "mean", "shuffle"])
@pytest.mark.parametrize("name", CASES)
def test_a_capture_of_a_perturbed_layer_records_the_perturbed_attention_in_either_nesting_order(name, kind):
    transformer, inputs, layer, grid = _build(name)
    modules = joint_attention_modules(transformer)
    stock = [m.processor for m in modules]
    perturbation = lambda: perturb_attention(transformer, layer, kind, blur_sigma=1.0, seed=SEED)  # noqa: E731
    capture = lambda: capture_attention(transformer, layers=[layer], diagnostics=True)  # noqa: E731
    logits = lambda: capture_attention(
        transformer,
        layers=[layer],
        output="logits",  # noqa: E731
        directions=("image_to_text",),
    )

    alone, seen_alone, (p_alone,) = _run(transformer, inputs, layer, [perturbation])
    inside, seen_inside, (p_inside, cap_inside, logits_inside) = _run(
        transformer, inputs, layer, [perturbation, capture, logits]
    )
    around, seen_around, (cap_around, logits_around, p_around) = _run(
        transformer, inputs, layer, [capture, logits, perturbation]
    )
    assert all(m.processor is p for m, p in zip(modules, stock))  # the stock processors themselves are back

    # the captures only observe: the output is the perturbation's, bit for bit, whichever context is outside
    for output, seen, p in ((inside, seen_inside, p_inside), (around, seen_around, p_around)):
        torch.testing.assert_close(output, alone, **EXACT)
        for got, expected in zip(_outputs(seen["out"]), _outputs(seen_alone["out"])):
            torch.testing.assert_close(got, expected, **EXACT)
        assert (p.calls, p.strength) == (p_alone.calls, p_alone.strength) and p.calls == 1
    # nesting order does not matter
    for a, b in ((cap_inside, cap_around), (logits_inside, logits_around)):
        assert a.recorder.records.keys() == b.recorder.records.keys()
        for key in a.recorder.records:
            torch.testing.assert_close(a.tensor(key), b.tensor(key), **EXACT)

    with torch.no_grad():
        probs, image, text = _naive(name, modules[layer], seen_alone["kwargs"])
        replaced = _naive_perturbed(probs, image, text, grid, kind)
    recorded = cap_inside.tensor("image_to_text")[:, 0]
    torch.testing.assert_close(recorded, replaced[:, :, image, text], atol=2e-7, rtol=1e-5)
    assert (recorded - probs[:, :, image, text]).abs().max() > 1e-3  # …which is not the stock attention
    torch.testing.assert_close(cap_inside.tensor("text_to_image")[:, 0], probs[:, :, text, image], atol=2e-7, rtol=1e-5)
    # as logits, log P' + lse: logit − image_lse is the log-probability the layer used
    log_used = logits_inside.tensor("image_to_text")[:, 0] - logits_inside.tensor("image_lse")[:, 0, ..., None]
    torch.testing.assert_close(log_used.exp(), replaced[:, :, image, text], atol=2e-7, rtol=1e-5)
    # diagnostics of the rows the layer used: the perturbation keeps each row's text mass, changes its entropy
    entropy = -torch.special.xlogy(replaced, replaced).sum(-1)
    torch.testing.assert_close(cap_inside.tensor("image_entropy")[:, 0], entropy[:, :, image], atol=2e-6, rtol=1e-5)
    torch.testing.assert_close(
        cap_inside.tensor("image_to_text_mass")[:, 0], replaced[:, :, image, text].sum(-1), atol=2e-7, rtol=1e-5
    )


@pytest.mark.parametrize("name", ["sd3", "flux_single_stream"])
def test_two_captures_of_one_layer_both_record_what_one_alone_records(name):
    transformer, inputs, layer, _ = _build(name)
    one = lambda: capture_attention(transformer, layers=[layer], diagnostics=True)  # noqa: E731
    every = lambda: capture_attention(transformer)  # noqa: E731
    _, _, (alone,) = _run(transformer, inputs, layer, [one])
    _, _, (first, second, wide) = _run(transformer, inputs, layer, [one, one, every])
    for cap in (first, second):
        assert cap.recorder.records.keys() == alone.recorder.records.keys() and cap.steps == 1
        for key in alone.recorder.records:
            torch.testing.assert_close(cap.tensor(key), alone.tensor(key), **EXACT)
    torch.testing.assert_close(wide.tensor("image_to_text")[:, layer], alone.tensor("image_to_text")[:, 0], **EXACT)


def test_two_perturbations_of_one_layer_compose():
    """Shuffle inside blur: the layer uses shuffle(blur(P)), and a capture there records it."""
    transformer, inputs, layer, grid = _build("sd3")
    blur = lambda: perturb_attention(transformer, layer, "blur", blur_sigma=1.0, seed=SEED)  # noqa: E731
    shuffle = lambda: perturb_attention(transformer, layer, "shuffle", seed=SEED)  # noqa: E731
    capture = lambda: capture_attention(transformer, layers=[layer], directions=("image_to_text",))  # noqa: E731
    _, seen, (cap, _, _) = _run(transformer, inputs, layer, [capture, blur, shuffle])
    with torch.no_grad():
        probs, image, text = _naive("sd3", joint_attention_modules(transformer)[layer], seen["kwargs"])
        blurred = _naive_perturbed(probs, image, text, grid, "blur")
        both = _naive_perturbed(blurred, image, text, grid, "shuffle")
    torch.testing.assert_close(cap.tensor("image_to_text")[:, 0], both[:, :, image, text], atol=2e-7, rtol=1e-5)


def test_stock_processors_come_back_on_error_and_when_contexts_are_left_out_of_order():
    transformer, inputs, layer, _ = _build("flux_double_stream")
    modules = joint_attention_modules(transformer)
    stock = [m.processor for m in modules]
    with pytest.raises(RuntimeError, match="boom"):
        with capture_attention(transformer, layers=[0, layer]), perturb_attention(transformer, layer, "mean"):
            raise RuntimeError("boom")
    assert all(m.processor is p for m, p in zip(modules, stock))

    with torch.no_grad(), perturb_attention(transformer, layer, "mean"):
        perturbed = transformer(**inputs)[0]
    capture = capture_attention(transformer, layers=[layer])
    perturbation = perturb_attention(transformer, layer, "mean")
    capture.__enter__()
    perturbation.__enter__()
    capture.__exit__(None, None, None)  # the first to come leaves first: the perturbation stays on the layer
    with torch.no_grad():
        torch.testing.assert_close(transformer(**inputs)[0], perturbed, **EXACT)
    perturbation.__exit__(None, None, None)
    assert all(m.processor is p for m, p in zip(modules, stock))


def test_an_intervention_is_hooked_by_one_context_at_a_time():
    transformer, _, layer, _ = _build("sd3")
    with perturb_attention(transformer, layer, "blur") as perturbation:
        with pytest.raises(RuntimeError, match="this Perturbation is already installed"):
            with intervene(transformer, [0], perturbation):
                pass
        assert interventions_on(joint_attention_modules(transformer)[layer]) == [perturbation]
    with pytest.raises(IndexError, match=r"layers \[7\] out of range: the transformer has 3 joint-attention layers"):
        with perturb_attention(transformer, 7, "blur"):
            pass


def test_the_family_table_finds_every_layers_joint_attention():
    flux = tiny_flux_transformer()
    assert family_of(flux) is FAMILIES["FluxTransformer2DModel"]
    expected = [b.attn for b in flux.transformer_blocks] + [b.attn for b in flux.single_transformer_blocks]
    assert joint_attention_modules(flux) == expected and len(expected) == 4
    sd35 = tiny_sd3_transformer(sd35=True)
    assert joint_attention_modules(sd35) == [b.attn for b in sd35.transformer_blocks]  # attn2 is image-only
    with pytest.raises(TypeError, match="not Linear: add a row to FAMILIES in seg4diff/capture/families.py"):
        capture_attention(torch.nn.Linear(2, 2)).__enter__()
