"""Every covered family: captured attention equals the naive joint softmax from the module's own projections, in both
directions, and the transformer's output is unchanged by the capture."""

import importlib
import pkgutil

import family_cases
import pytest
import torch

from seg4diff.backbones.lora import LoraSpec, add_lora
from seg4diff.capture.attention import capture_attention
from seg4diff.capture.families import FAMILIES, family_of, joint_attention_modules
from seg4diff.capture.layer_count import declared_layer_count
from seg4diff.capture.perturb import perturb, perturb_attention
from seg4diff.errors import ConfigError

GROUPS = [importlib.import_module(f"family_cases.{info.name}") for info in pkgutil.iter_modules(family_cases.__path__)]
CASES = [case for group in GROUPS for case in group.CASES]


def _tensors(output) -> list[torch.Tensor]:
    """Returns a forward's output as a list of tensors (Z-Image returns one per sample)."""
    return list(output) if isinstance(output, (list, tuple)) else [output]


def _stock_calls(transformer, inputs):
    """Returns the stock output and, per joint-attention layer, the (args, kwargs) its module was called with."""
    seen, handles = {}, []
    for index, module in enumerate(joint_attention_modules(transformer)):

        def keep(module, args, kwargs, index=index):
            seen.setdefault(index, (args, kwargs))

        handles.append(module.register_forward_pre_hook(keep, with_kwargs=True))
    try:
        with torch.no_grad():
            output = transformer(**inputs)[0]
    finally:
        for handle in handles:
            handle.remove()
    return output, seen


def _cast(value, dtype: torch.dtype):
    """Returns `value` (a tensor, or lists / tuples / dicts of them) with its floating tensors in `dtype`."""
    if isinstance(value, torch.Tensor):
        return value.to(dtype) if value.is_floating_point() else value
    if isinstance(value, (list, tuple)):
        return type(value)(_cast(v, dtype) for v in value)
    if isinstance(value, dict):  # positions stay as the pipelines give them (LongCat's 512 + row is not a bf16 number)
        return {k: v if k.endswith("ids") else _cast(v, dtype) for k, v in value.items()}
    return value


def _built(case, dtype: torch.dtype = torch.float32):
    assert case.name in FAMILIES, f"no FAMILIES row for {case.name}"
    torch.manual_seed(0)
    transformer = case.build().eval().to(dtype)
    assert type(transformer).__name__ == case.name
    return transformer, _cast(case.inputs(transformer), dtype)


IDS = [case.name for case in CASES]


# probabilities: fp32 to float rounding; bf16: the naive reference forms q and k with the same bf16 layers, then
# computes in fp32 as the capture does, so only fused-kernel rounding of the lse differs
TOLERANCE = {torch.float32: {"atol": 2e-6, "rtol": 1e-4}, torch.bfloat16: {"atol": 2e-3, "rtol": 2e-2}}
OUTPUT_TOLERANCE = {torch.float32: {"atol": 1e-6, "rtol": 1e-5}, torch.bfloat16: {"atol": 0.0, "rtol": 0.0}}


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
@pytest.mark.parametrize("case", CASES, ids=IDS)
def test_capture_equals_the_naive_joint_softmax_and_leaves_the_output_unchanged(case, dtype):
    transformer, inputs = _built(case, dtype)
    stock, seen = _stock_calls(transformer, inputs)
    n_layers = len(joint_attention_modules(transformer))
    declared = declared_layer_count(dict(transformer.config, _class_name=case.name))  # what the settings check counts
    assert declared == n_layers
    assert sorted(seen) == list(range(n_layers)), "every joint-attention module runs once per forward"
    both = [layer for layer in range(n_layers) if layer not in case.queries_only]
    with torch.no_grad(), capture_attention(transformer, layers=both) as cap:
        captured = transformer(**inputs)[0]
    for got, expected in zip(_tensors(captured), _tensors(stock), strict=True):
        torch.testing.assert_close(got, expected, **OUTPUT_TOLERANCE[dtype])
    assert cap.recorder.grid == case.grid
    n_image, n_text = case.grid[0] * case.grid[1], case.text_length
    image = slice(0, n_image) if case.image_first else slice(n_text, n_text + n_image)
    text = slice(n_image, n_image + n_text) if case.image_first else slice(0, n_text)
    modules = joint_attention_modules(transformer)
    with torch.no_grad():
        for position, layer in enumerate(both):
            probs = case.naive(modules[layer], *seen[layer]).float()
            assert probs.shape[-1] == n_image + n_text
            torch.testing.assert_close(
                cap.tensor("image_to_text")[:, position], probs[:, :, image, text], **TOLERANCE[dtype]
            )
            torch.testing.assert_close(
                cap.tensor("text_to_image")[:, position], probs[:, :, text, image], **TOLERANCE[dtype]
            )
        for layer in case.queries_only:
            with capture_attention(transformer, layers=[layer], directions=("image_to_text",)) as only:
                transformer(**inputs)
            probs = case.naive(modules[layer], *seen[layer]).float()
            torch.testing.assert_close(only.tensor("image_to_text")[:, 0], probs[:, :, :, text], **TOLERANCE[dtype])


@pytest.mark.parametrize("case", CASES, ids=IDS)
def test_a_perturbation_edits_the_layer_a_capture_of_it_records(case):
    """The causal stage's edit on every family: the middle layer's image→text maps replaced by their spatial means,
    recorded by a capture of the same layer, and the output changes."""
    transformer, inputs = _built(case)
    layer = len(joint_attention_modules(transformer)) // 2
    with torch.no_grad():
        stock = transformer(**inputs)[0]
        with capture_attention(transformer, [layer], ("image_to_text",)) as before:
            transformer(**inputs)
        with perturb_attention(transformer, layer, "mean") as perturbation:
            with capture_attention(transformer, [layer], ("image_to_text",)) as used:
                perturbed = transformer(**inputs)[0]
    p = before.tensor("image_to_text")[:, 0]
    expected = perturb(p, case.grid, "mean")  # the maps' spatial means, each query's text mass kept
    torch.testing.assert_close(used.tensor("image_to_text")[:, 0], expected, atol=1e-6, rtol=1e-5)
    assert perturbation.calls == 1 and perturbation.l1 > 0
    assert max((a - b).abs().max() for a, b in zip(_tensors(perturbed), _tensors(stock))) > 1e-6


@pytest.mark.parametrize("case", CASES, ids=IDS)
def test_magnet_lora_adapts_the_image_stream_of_every_joint_layer_and_nothing_else(case):
    transformer, inputs = _built(case)
    family = family_of(transformer)
    if not family.lora_layers or not hasattr(transformer, "add_adapter"):
        with pytest.raises(ConfigError, match="MAGNET"):
            add_lora(transformer, LoraSpec(2, 2, 0.0, case.lora_targets))
        return
    parameters = add_lora(transformer, LoraSpec(2, 2, 0.0, case.lora_targets))
    adapted = {name.split(".lora_")[0] for name, _ in transformer.named_parameters() if ".lora_" in name}
    expected = {
        f"{layers}.{i}.{family.attention}.{target}"
        for layers in family.lora_layers
        for i in range(len(getattr(transformer, layers)))
        for target in case.lora_targets
    }
    assert adapted == expected and parameters
    assert all(p.requires_grad for p in parameters)
    assert not any(p.requires_grad for n, p in transformer.named_parameters() if ".lora_" not in n)
    with torch.no_grad():
        transformer(**inputs)
