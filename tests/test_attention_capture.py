"""Captured attention equals a naive softmax(QKᵀ/√d) built from each module's own projections; outputs unchanged."""

import numpy as np
import pytest
import torch
from tiny_pipelines import tiny_flux_transformer, tiny_sd3_transformer

from seg4diff.capture.attention import capture_attention
from seg4diff.capture.families import joint_attention_modules
from seg4diff.capture.kernels import attention_with_lse, chunked_attention_with_lse
from seg4diff.testing.reference import naive_flux_attention, naive_sd3_attention

TEXT = 7


def _sd3_inputs(transformer, batch=2, seed=0):
    g = torch.Generator().manual_seed(seed)
    c = transformer.config
    return {
        "hidden_states": torch.randn(batch, c.in_channels, 16, 16, generator=g),
        "encoder_hidden_states": torch.randn(batch, TEXT, c.joint_attention_dim, generator=g),
        "pooled_projections": torch.randn(batch, c.pooled_projection_dim, generator=g),
        "timestep": torch.tensor([500.0, 250.0][:batch]),
        "return_dict": False,
    }


def _flux_inputs(transformer, batch=2, seed=0):
    g = torch.Generator().manual_seed(seed)
    c = transformer.config
    n_image = 36
    image_ids = torch.zeros(6, 6, 3)
    image_ids[..., 1] += torch.arange(6)[:, None]
    image_ids[..., 2] += torch.arange(6)[None, :]
    return {
        "hidden_states": torch.randn(batch, n_image, c.in_channels, generator=g),
        "encoder_hidden_states": torch.randn(batch, TEXT, c.joint_attention_dim, generator=g),
        "pooled_projections": torch.randn(batch, c.pooled_projection_dim, generator=g),
        "timestep": torch.tensor([0.5, 0.25][:batch]),
        "img_ids": image_ids.reshape(-1, 3),
        "txt_ids": torch.zeros(TEXT, 3),
        "guidance": None,
        "return_dict": False,
    }


def _record_inputs(transformer):
    """Registers hooks that keep each joint attention module's inputs and outputs during a stock forward."""
    seen = {}

    def hook(index):
        def keep(module, args, kwargs, output):
            seen[index] = (kwargs, output)

        return keep

    modules = joint_attention_modules(transformer)
    handles = [m.register_forward_hook(hook(i), with_kwargs=True) for i, m in enumerate(modules)]
    return seen, handles


MODELS = {
    "sd3": (lambda: tiny_sd3_transformer(), _sd3_inputs),
    "sd35": (lambda: tiny_sd3_transformer(sd35=True), _sd3_inputs),
    "flux": (tiny_flux_transformer, _flux_inputs),
}


@pytest.mark.parametrize("name", MODELS)
def test_capture_equals_naive_softmax_and_leaves_outputs_unchanged(name):
    torch.manual_seed(0)
    build, make_inputs = MODELS[name]
    transformer = build().eval()
    inputs = make_inputs(transformer)
    modules = joint_attention_modules(transformer)
    stock_processors = [m.processor for m in modules]

    seen, handles = _record_inputs(transformer)
    with torch.no_grad():
        stock = transformer(**inputs)[0]
    for h in handles:
        h.remove()
    stock_seen = dict(seen)

    seen, handles = _record_inputs(transformer)
    with torch.no_grad(), capture_attention(transformer, diagnostics=True) as cap:
        captured = transformer(**inputs)[0]
    for h in handles:
        h.remove()
    assert [m.processor for m in modules] == stock_processors  # originals restored
    torch.testing.assert_close(captured, stock, atol=1e-6, rtol=1e-5)
    for index, (_, out) in stock_seen.items():  # every block's attention output equals the stock processor's
        got = seen[index][1]
        for a, b in zip(out if isinstance(out, tuple) else (out,), got if isinstance(out, tuple) else (got,)):
            torch.testing.assert_close(b, a, atol=1e-6, rtol=1e-5)

    i2t, t2i = cap.image_to_text, cap.text_to_image
    assert i2t.dims == ("batch", "layer", "head", "image_token", "text_token")
    assert i2t.sizes["layer"] == len(modules) and i2t.sizes["text_token"] == TEXT
    with torch.no_grad():
        for layer, (kwargs, _) in stock_seen.items():
            if name == "flux":
                text = kwargs.get("encoder_hidden_states")
                probs = naive_flux_attention(modules[layer], kwargs["hidden_states"], text, kwargs["image_rotary_emb"])
                full_image, full_text = probs[:, :, TEXT:, TEXT:], probs[:, :, :TEXT, :TEXT]
                ref_i2t, ref_t2i = probs[:, :, TEXT:, :TEXT], probs[:, :, :TEXT, TEXT:]
            else:
                probs = naive_sd3_attention(modules[layer], kwargs["hidden_states"], kwargs["encoder_hidden_states"])
                n = kwargs["hidden_states"].shape[1]
                full_image, full_text = probs[:, :, :n, :n], probs[:, :, n:, n:]
                ref_i2t, ref_t2i = probs[:, :, :n, n:], probs[:, :, n:, :n]
            np.testing.assert_allclose(i2t.sel(layer=layer).values, ref_i2t.numpy(), atol=1e-5)
            np.testing.assert_allclose(t2i.sel(layer=layer).values, ref_t2i.numpy(), atol=1e-5)
            # kept + dropped mass: each full row sums to one
            image_rows = i2t.sel(layer=layer).values.sum(-1) + full_image.sum(-1).numpy()
            text_rows = t2i.sel(layer=layer).values.sum(-1) + full_text.sum(-1).numpy()
            np.testing.assert_allclose(image_rows, 1.0, atol=1e-5)
            np.testing.assert_allclose(text_rows, 1.0, atol=1e-5)
            # diagnostics: mass on the other modality and full-row entropy, without the N×N matrix
            np.testing.assert_allclose(
                cap.diagnostic("image_to_text_mass").sel(layer=layer).values, ref_i2t.sum(-1).numpy(), atol=1e-5
            )
            entropy = -(probs * probs.clamp_min(1e-30).log()).sum(-1)
            image_entropy = entropy[:, :, TEXT:] if name == "flux" else entropy[:, :, :n]
            np.testing.assert_allclose(
                cap.diagnostic("image_entropy").sel(layer=layer).values, image_entropy.numpy(), atol=1e-4
            )


def test_selected_layers_tokens_head_mean_and_per_sample_tokens():
    torch.manual_seed(0)
    transformer = tiny_sd3_transformer().eval()
    inputs = _sd3_inputs(transformer)
    with torch.no_grad(), capture_attention(transformer) as full:
        transformer(**inputs)
    with (
        torch.no_grad(),
        capture_attention(
            transformer, layers=[1], text_tokens=[4, 0], head_mean=True, directions=("image_to_text",)
        ) as some,
    ):
        transformer(**inputs)
    expected = full.image_to_text.sel(layer=[1]).isel(text_token=[4, 0]).mean("head", keepdims=True)
    np.testing.assert_allclose(some.image_to_text.values, expected.values, atol=1e-6)
    assert some.image_to_text.coords["head"].values.tolist() == [-1]
    with pytest.raises(KeyError, match="nothing recorded for 'text_to_image'"):
        some.text_to_image
    per_sample = torch.tensor([[1, 2], [5, 6]])
    with torch.no_grad(), capture_attention(transformer, layers=[0], text_tokens=per_sample) as cap:
        transformer(**inputs)
    full_i2t, full_t2i = full.image_to_text.sel(layer=[0]).values, full.text_to_image.sel(layer=[0]).values
    for b in range(2):
        kept = per_sample[b].numpy()
        np.testing.assert_allclose(cap.image_to_text.values[b], full_i2t[b][..., kept], atol=1e-6)
        np.testing.assert_allclose(cap.text_to_image.values[b], full_t2i[b][..., kept, :], atol=1e-6)


def test_processors_restored_on_error_and_bad_layers_refused():
    transformer = tiny_sd3_transformer().eval()
    before = [m.processor for m in joint_attention_modules(transformer)]
    with pytest.raises(RuntimeError, match="boom"):
        with capture_attention(transformer, layers=[0, 2]):
            raise RuntimeError("boom")
    assert [m.processor for m in joint_attention_modules(transformer)] == before
    with pytest.raises(IndexError, match=r"layers \[3\] out of range: the transformer has 3"):
        with capture_attention(transformer, layers=[3]):
            pass


def test_logits_keep_gradients_for_losses():
    torch.manual_seed(0)
    transformer = tiny_sd3_transformer().eval()
    inputs = _sd3_inputs(transformer, batch=1)
    with capture_attention(
        transformer, layers=[1], output="logits", detach=False, directions=("image_to_text",)
    ) as cap:
        transformer(**inputs)
    logits = cap.tensor("image_to_text")
    logits.sum().backward()
    assert transformer.transformer_blocks[1].attn.to_q.weight.grad.abs().sum() > 0
    with torch.no_grad(), capture_attention(transformer, layers=[1], directions=("image_to_text",)) as probs:
        transformer(**inputs)
    # probabilities are exp(logit − lse over all keys): ratios between text keys match softmax of the logits
    p = probs.tensor("image_to_text")[0, 0, 0, 0]
    row = logits.detach()[0, 0, 0, 0]
    torch.testing.assert_close(p / p.sum(), torch.softmax(row, -1), atol=1e-6, rtol=1e-5)


def test_kernel_and_chunked_fallback_agree():
    g = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(2, 3, 50, 8, generator=g) for _ in range(3))
    out, lse = attention_with_lse(q, k, v)
    out2, lse2 = chunked_attention_with_lse(q, k, v, 8**-0.5, chunk=16)
    torch.testing.assert_close(out, torch.nn.functional.scaled_dot_product_attention(q, k, v))
    torch.testing.assert_close(out2, out, atol=1e-6, rtol=1e-5)
    torch.testing.assert_close(lse2, lse, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(lse, torch.logsumexp(q @ k.transpose(-1, -2) * 8**-0.5, -1), atol=1e-5, rtol=1e-5)


def test_bf16_model_gives_fp32_exact_kept_logits():
    """In bf16 the kept logits come from fp32 copies of q and k: captured = naive fp32 softmax of the same q, k."""
    torch.manual_seed(0)
    transformer = tiny_sd3_transformer().eval().to(torch.bfloat16)
    inputs = {
        k: v.to(torch.bfloat16) if torch.is_tensor(v) and v.is_floating_point() else v
        for k, v in _sd3_inputs(transformer).items()
    }
    seen, handles = _record_inputs(transformer)
    with torch.no_grad(), capture_attention(transformer, layers=[1], directions=("image_to_text",)) as cap:
        transformer(**inputs)
    for h in handles:
        h.remove()
    kwargs = seen[1][0]
    with torch.no_grad():
        probs = naive_sd3_attention(
            joint_attention_modules(transformer)[1], kwargs["hidden_states"], kwargs["encoder_hidden_states"]
        )
    n = kwargs["hidden_states"].shape[1]
    captured = cap.tensor("image_to_text")[:, 0]
    assert captured.dtype == torch.float32
    error = (captured - probs[:, :, :n, n:]).abs().max().item()
    # bf16 logits would be off by up to |logit|·2⁻⁹ before the exponential; ours differ only through the kernel's lse
    assert error < 1e-5, error


def test_a_capture_around_a_whole_generation_keeps_every_step():
    """Wrapping pipe(prompt): one record per denoising step (CFG batch), (y, x) views, maps looked up by word."""
    from tiny_pipelines import tiny_sd3_pipeline

    from seg4diff.capture.trace import trace

    pipe = tiny_sd3_pipeline()
    prompt = "a red cat on a mat"
    with torch.no_grad(), trace(pipe) as tc:
        pipe(
            prompt,
            num_inference_steps=3,
            height=32,
            width=32,
            guidance_scale=2.0,
            max_sequence_length=16,
            output_type="np",
        )
    i2t = tc.capture.image_to_text
    assert tc.capture.steps == 3 and tc.prompts == [prompt]
    assert i2t.dims == ("step", "batch", "layer", "head", "image_token", "text_token")
    assert i2t.sizes["step"] == 3 and i2t.sizes["batch"] == 2 and i2t.sizes["text_token"] == 77 + 16  # CLIP + T5
    assert not np.allclose(i2t.isel(step=0).values, i2t.isel(step=2).values)  # each step its own record
    maps = tc.capture.maps()
    side = int(np.sqrt(i2t.sizes["image_token"]))
    assert maps.dims == ("step", "batch", "layer", "head", "y", "x", "text_token") and maps.sizes["y"] == side
    np.testing.assert_array_equal(maps.values.reshape(i2t.shape), i2t.values)  # row-major image tokens
    # the word's CLIP positions found independently: its token ids as a sub-sequence of the prompt's
    ids = pipe.tokenizer(prompt).input_ids
    word = pipe.tokenizer("cat", add_special_tokens=False).input_ids
    start = next(k for k in range(len(ids)) if ids[k : k + len(word)] == word)
    expected = maps.isel(batch=1, text_token=list(range(start, start + len(word)))).mean("text_token")
    np.testing.assert_allclose(tc.word_maps("cat", encoder="clip").values, expected.values, rtol=1e-6)
    assert tc.word_maps("cat").dims == ("step", "layer", "head", "y", "x")  # CLIP and T5 tokens of the word
    with pytest.raises(KeyError, match="'dog' is not a word of the traced prompt"):
        tc.word_maps("dog")
    assert "encode_prompt" not in vars(pipe)  # the pipeline is left as it was


def test_single_forward_keeps_its_dims_and_two_forwards_add_a_step():
    torch.manual_seed(0)
    transformer = tiny_sd3_transformer().eval()
    inputs = _sd3_inputs(transformer)
    with torch.no_grad(), capture_attention(transformer, layers=[0]) as one:
        transformer(**inputs)
    with torch.no_grad(), capture_attention(transformer, layers=[0]) as two:
        transformer(**inputs)
        transformer(**_sd3_inputs(transformer, seed=1))
    assert one.image_to_text.dims == ("batch", "layer", "head", "image_token", "text_token") and one.steps == 1
    assert two.image_to_text.dims[0] == "step" and two.steps == 2
    np.testing.assert_array_equal(two.image_to_text.isel(step=0).values, one.image_to_text.values)
    torch.testing.assert_close(two.tensor("image_to_text", step=1), two.tensor("image_to_text")[1])


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("family", ["sd3", "flux"])
def test_on_cuda_the_fused_kernels_capture_the_naive_softmax(family, dtype):
    """The CUDA kernels (cuDNN / flash / memory-efficient, each with its log-sum-exp) give the naive joint softmax and
    leave every output as the stock processor's: the path a GPU extraction takes."""
    torch.manual_seed(0)
    make, inputs_of, naive = (
        (tiny_sd3_transformer, _sd3_inputs, naive_sd3_attention)
        if family == "sd3"
        else (tiny_flux_transformer, _flux_inputs, naive_flux_attention)
    )
    transformer = make().eval().to("cuda", dtype)
    inputs = {
        k: v.to("cuda", dtype) if torch.is_tensor(v) and v.is_floating_point() else v
        for k, v in inputs_of(transformer).items()
    }
    with torch.no_grad():
        stock = transformer(**inputs)[0]
    seen, handles = _record_inputs(transformer)
    with torch.no_grad(), capture_attention(transformer, layers=[1], directions=("image_to_text",)) as cap:
        captured_out = transformer(**inputs)[0]
    for h in handles:
        h.remove()
    kwargs = seen[1][0]
    attn = joint_attention_modules(transformer)[1]
    with torch.no_grad():
        if family == "sd3":
            probs = naive(attn, kwargs["hidden_states"], kwargs["encoder_hidden_states"])
            n = kwargs["hidden_states"].shape[1]
            expected = probs[:, :, :n, n:]
        else:
            probs = naive(attn, kwargs["hidden_states"], kwargs["encoder_hidden_states"], kwargs["image_rotary_emb"])
            n_text = kwargs["encoder_hidden_states"].shape[1]
            expected = probs[:, :, n_text:, :n_text]
    captured = cap.tensor("image_to_text")[:, 0]
    tolerance = 1e-5 if dtype == torch.float32 else 2e-3  # bf16: the kernel's lse of bf16 q, k
    assert (captured - expected).abs().max().item() < tolerance
    torch.testing.assert_close(captured_out, stock)  # the block outputs are the stock ones
