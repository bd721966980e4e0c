import numpy as np
import pytest
import torch
import torch.nn.functional as F
from tiny_pipelines import clip_tokenizer
from transformers import CLIPConfig, CLIPImageProcessor, CLIPModel, CLIPProcessor

from seg4diff.evaluation.fidelity import clip_score


def test_clip_score_matches_a_direct_computation(tmp_path):
    torch.manual_seed(0)
    tokenizer = clip_tokenizer()
    config = CLIPConfig(
        text_config={
            "vocab_size": len(tokenizer),
            "hidden_size": 32,
            "intermediate_size": 37,
            "num_hidden_layers": 1,
            "num_attention_heads": 2,
            "max_position_embeddings": 77,
            "bos_token_id": tokenizer.bos_token_id,
            "eos_token_id": tokenizer.eos_token_id,
            "pad_token_id": tokenizer.pad_token_id,
        },
        vision_config={
            "hidden_size": 32,
            "intermediate_size": 37,
            "num_hidden_layers": 1,
            "num_attention_heads": 2,
            "image_size": 32,
            "patch_size": 8,
        },
        projection_dim=16,
    )
    model = CLIPModel(config).eval()
    processor = CLIPProcessor(
        image_processor=CLIPImageProcessor(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32}),
        tokenizer=tokenizer,
    )
    model.save_pretrained(tmp_path / "clip")
    processor.save_pretrained(tmp_path / "clip")
    images = np.random.default_rng(0).random((2, 32, 32, 3))
    captions = ["red circle", "blue square"]
    score = clip_score(images, captions, tmp_path / "clip")
    inputs = processor(
        text=captions, images=[(i * 255).astype(np.uint8) for i in images], return_tensors="pt", padding=True
    )
    with torch.no_grad():
        out = model(**inputs)
    expected = (100 * F.cosine_similarity(out.image_embeds, out.text_embeds)).clamp_min(0).mean().item()
    assert score == pytest.approx(expected, abs=1e-4) and 0 <= score <= 100
    with pytest.raises(FileNotFoundError, match="evaluate.clip_model"):
        clip_score(images, captions, tmp_path / "absent")
