"""WinCLIP: prompts, window embeddings (token dropping = attention masking), harmonic aggregation, WinCLIP+ invariants."""
from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import anomalens
from anomalens.models.winclip import build_prompts, harmonic_aggregate, window_embeddings, window_indices
from anomalens.models.winclip.prompts import TEMPLATES_ANOMALIB21, TEMPLATES_PAPER22
from anomalens.models.winclip.torch_model import embed_tokens, encode_sequences


@pytest.fixture(scope="module")
def model():
    return anomalens.create("winclip", class_name="metal_nut", backbone="ViT-S-16", weights=None, image_size=96, device="cpu")


def test_prompt_counts_and_words():
    normal, anomalous = build_prompts("metal_nut")
    assert len(normal) == 7 * 22 and len(anomalous) == 4 * 22
    assert normal[0] == "a cropped photo of the metal nut." and anomalous[0] == "a cropped photo of the damaged metal nut."
    assert len(TEMPLATES_ANOMALIB21) == 21 and TEMPLATES_ANOMALIB21.count("a jpeg corrupted photo of the {}.") == 2
    assert len(set(TEMPLATES_PAPER22)) == 22
    _, extra = build_prompts("pcb", extra_anomalous=("bad soldering", "burnt {}"))
    assert len(extra) == 6 * 22 and "a photo of the pcb with bad soldering." in extra and "a photo of the burnt pcb." in extra


def test_window_indices_row_major():
    w = window_indices(15, 2)
    assert w.shape == (196, 4) and w[0].tolist() == [0, 1, 15, 16] and w[1].tolist() == [1, 2, 16, 17]
    assert window_indices(15, 3).shape == (169, 9)


def test_whole_grid_window_is_the_image_embedding(model):
    visual = model._model().visual
    x = torch.randn(2, 3, 96, 96)
    with torch.inference_mode():
        E = embed_tokens(visual, x)
        f, _ = encode_sequences(visual, E)
        whole = window_embeddings(visual, E, window_indices(model.grid, model.grid))
        ref = model._model().encode_image(x)
    assert torch.allclose(whole[:, 0], f, atol=1e-4) and torch.allclose(f, ref, atol=1e-4)


def test_window_embeddings_differ_and_equal_attention_masked_forward(model):
    """The check that catches a batch-first/sequence-first mix-up (all windows identical, flat maps)."""
    visual = model._model().visual
    x = torch.randn(1, 3, 96, 96)
    wins = window_indices(model.grid, 2)
    with torch.inference_mode():
        E = embed_tokens(visual, x)
        fw = window_embeddings(visual, E, wins)[0]
        assert (fw[0] - fw[1]).abs().max() > 1e-3 and torch.unique(fw.round(decimals=4), dim=0).shape[0] == len(wins)
        for j in (0, 7, len(wins) - 1):  # full 1+P sequence, queries may only attend to CLS + window keys
            keep = torch.zeros(E.shape[1], dtype=torch.bool)
            keep[0] = True
            keep[wins[j] + 1] = True
            mask = torch.zeros(E.shape[1], E.shape[1])
            mask[:, ~keep] = float("-inf")
            out = visual.transformer(visual.ln_pre(E), attn_mask=mask)
            cls = visual.ln_post(out[:, 0]) @ visual.proj
            assert torch.allclose(cls[0], fw[j], atol=1e-4)


def _harmonic_loop(scores, grid, k):
    side = grid - k + 1
    out = np.zeros((grid, grid))
    for p in range(grid * grid):
        r, c = divmod(p, grid)
        cover = [scores[u * side + v] for u in range(side) for v in range(side) if u <= r < u + k and v <= c < v + k]
        out[r, c] = len(cover) / sum(1 / s for s in cover)
    return out


def test_harmonic_aggregation_properties():
    g = torch.Generator().manual_seed(0)
    s = torch.rand(1, 169, generator=g, dtype=torch.float64) * 0.9 + 0.05
    agg = harmonic_aggregate(s, 15, 3)[0]
    assert np.allclose(agg.numpy(), _harmonic_loop(s[0].numpy(), 15, 3), atol=1e-10)
    single = harmonic_aggregate(torch.tensor([[0.37]]), 15, 15)
    assert torch.allclose(single, torch.full((1, 15, 15), 0.37))  # one window = its score everywhere
    s2 = s.clone()
    s2[0, 84] = 1e-9  # one near-zero window pulls the patches it covers towards 0
    agg2 = harmonic_aggregate(s2, 15, 3)[0]
    u, v = divmod(84, 13)
    assert agg2[u + 1, v + 1] < 1e-6 and agg2[0, 0] == agg[0, 0]
    assert torch.isfinite(harmonic_aggregate(torch.zeros(1, 196), 15, 2)).all()


def test_few_shot_identity_and_shared_language_path(model):
    x = torch.rand(2, 3, 96, 96, generator=torch.Generator().manual_seed(1))
    zero = model.predict(x).image_scores
    plus = anomalens.create("winclip", class_name="metal_nut", backbone="ViT-S-16", weights=None, image_size=96,
                            device="cpu", k_shot=1).fit(x[:1])
    s = plus.predict(x).image_scores
    assert s[0] == pytest.approx(zero[0] / 2, rel=1e-5)  # the query is its own reference: M^W ≡ 0
    assert s[1] > zero[1] / 2


def test_few_shot_pasted_defect_peaks_at_its_place():
    g = torch.Generator().manual_seed(2)
    ref = (0.5 + 0.05 * torch.randn(1, 3, 96, 96, generator=g)).clamp(0, 1)
    query = ref.clone()
    query[:, :, 64:80, 16:32] = torch.tensor([1.0, 0.0, 0.0])[:, None, None]
    plus = anomalens.create("winclip", backbone="ViT-S-16", weights=None, image_size=96, device="cpu", k_shot=1).fit(ref)
    pred = plus.predict(torch.cat([ref, query]))
    assert pred.image_scores[1] > pred.image_scores[0]
    peak = np.unravel_index(np.argmax(pred.anomaly_maps[1] - pred.anomaly_maps[0]), (96, 96))
    assert 56 <= peak[0] <= 88 and 8 <= peak[1] <= 40


def test_deterministic_and_k_shot_needs_images(model):
    x = torch.rand(1, 3, 96, 96, generator=torch.Generator().manual_seed(3))
    assert np.array_equal(model.predict(x).anomaly_maps, model.predict(x).anomaly_maps)
    with pytest.raises(ValueError, match="needs normal reference images"):
        anomalens.create("winclip", backbone="ViT-S-16", weights=None, image_size=96, device="cpu", k_shot=2).fit()


def test_truncated_text_encoding_is_exact(model):
    from anomalens.models.winclip.torch_model import encode_text_truncated

    clip = model._model()
    tokens = model._tokenizer(build_prompts("bottle")[1][:12])
    with torch.inference_mode():
        assert torch.allclose(encode_text_truncated(clip, tokens), clip.encode_text(tokens), atol=1e-5)


@pytest.mark.parametrize("h,w", [(240, 360), (240, 600), (300, 240), (240, 240), (240, 241)])
def test_tiling_covers_every_pixel(h, w):
    from anomalens.data.geometry import tile_offsets

    S = min(h, w)
    cover = np.zeros((h, w), int)
    for t in tile_offsets(h, S, int(0.8 * S)):
        for l in tile_offsets(w, S, int(0.8 * S)):
            cover[t : t + S, l : l + S] += 1
            assert t + S <= h and l + S <= w
    assert cover.min() >= 1
    offs = tile_offsets(max(h, w), S, int(0.8 * S))
    assert all(b - a <= int(0.8 * S) for a, b in zip(offs, offs[1:]))


def test_non_square_image_is_tiled_end_to_end(model):
    x = torch.rand(1, 3, 96, 160, generator=torch.Generator().manual_seed(4))
    frame = model.transform.image(x[0])[None]
    assert [b[:2] for b in model.frame.tiler.boxes(*frame.shape[-2:])] == [(0, 0), (0, 64)]
    pred = model.predict(x)
    assert pred.anomaly_maps.shape == (1, 96, 160) and np.isfinite(pred.anomaly_maps).all()


def test_paper_tiling_equals_a_literal_loop_over_square_tiles(model):
    """The shared geometry layer reproduces the paper's tiling (supp. A) exactly: square tiles of the shorter side at
    stride ⌊0.8 S⌋ (last one at the edge), each scored alone, scores averaged, maps averaged where tiles overlap."""
    x = torch.rand(2, 3, 96, 250, generator=torch.Generator().manual_seed(7))
    frames = torch.stack([model.transform.image(im) for im in x])
    H, W = frames.shape[-2:]
    S = min(H, W)
    offs = list(range(0, W - S, int(0.8 * S))) + [W - S]
    score, amap, count = torch.zeros(2, dtype=torch.float64), torch.zeros(2, H, W), torch.zeros(H, W)
    for l in offs:
        s, m = model._score_square(frames[..., :, l : l + S])
        score += s.double()
        amap[:, :, l : l + S] += m
        count[:, l : l + S] += 1
    pred = model.predict(x)
    np.testing.assert_allclose(pred.image_scores, (score / len(offs)).numpy(), rtol=1e-6)
    np.testing.assert_allclose(pred.anomaly_maps, (amap / count).numpy(), rtol=1e-5, atol=1e-6)


def test_folder_of_mixed_image_sizes_scores_every_image(model, tmp_path):
    """WinCLIP keeps each image's aspect (square tiles), so a folder of mixed sizes gives batches of different shapes."""
    from PIL import Image

    sizes = [(96, 96), (80, 160), (120, 90), (80, 160)]
    rng = np.random.default_rng(0)
    for i, (h, w) in enumerate(sizes):
        Image.fromarray(rng.integers(0, 255, (h, w, 3), dtype=np.uint8)).save(tmp_path / f"{i}.png")
    pred = model.predict(str(tmp_path))
    assert pred.image_scores.shape == (4,) and np.isfinite(pred.image_scores).all()
    assert pred.anomaly_maps.shape[0] == 4 and np.isfinite(pred.anomaly_maps).all()
    assert [pred.map_at_original_size(i).shape for i in range(4)] == sizes
    alone = model.predict(str(tmp_path / "2.png"))  # the same image scored alone gives the same score
    assert alone.image_scores[0] == pytest.approx(pred.image_scores[2], rel=1e-5)
    plus = anomalens.create("winclip", backbone="ViT-S-16", weights=None, image_size=96, device="cpu", k_shot=2).fit(str(tmp_path))
    assert np.isfinite(plus.predict(str(tmp_path)).image_scores).all()
