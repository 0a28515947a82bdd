"""CLIP-AD (spec §8): every invariant against a slow, obviously-correct reference, on a tiny random-init CLIP."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import anomalens
from anomalens.models.clipad import clipad_minmax_scores
from anomalens.models.clipad.prompts import build_prompts
from anomalens.models.clipad.torch_model import (
    StageAdapters,
    adapter_probabilities,
    dice_loss,
    dual_path_forward,
    feature_surgery,
    focal_loss,
    representative_vector,
    sdp_map,
    sdp_plus_loss,
)

def _register_tiny_clip() -> str:
    """A tiny open_clip config with CLIP-AD's structure (12 vision blocks → 4 stages, patch 16, 96² → 37 tokens;
    vision width 64 ≠ embed dim 32 so the adapters' shape checks mean something); random init only."""
    import os
    import tempfile

    import open_clip

    name = "clipad-tiny-test"
    if name not in open_clip.list_models():
        cfg = {"embed_dim": 32, "vision_cfg": {"image_size": 96, "layers": 12, "width": 64, "head_width": 16, "patch_size": 16},
               "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 64, "heads": 4, "layers": 3}}
        folder = tempfile.mkdtemp(prefix="clipad-cfg-")
        with open(os.path.join(folder, f"{name}.json"), "w") as fh:
            json.dump(cfg, fh)
        open_clip.add_model_config(folder)
    return name


TINY = dict(backbone=_register_tiny_clip(), weights=None, image_size=96, device="cpu")


def tiny(**kw):
    return anomalens.create("clipad", **(dict(TINY, class_name="bottle") | kw))


@pytest.fixture(scope="module")
def model():
    return tiny()


@pytest.fixture(scope="module")
def images():
    return torch.rand(4, 3, 96, 96, generator=torch.Generator().manual_seed(0))


def _normalised(m, x):
    return torch.stack([m.transform.image(im) for im in x])


# ---- prompts, text ---------------------------------------------------------------------------------------------
def test_prompt_counts_and_state_major_order():
    normal, abnormal = build_prompts("metal_nut")
    assert len(normal) == 198 and len(abnormal) == 220
    assert normal[0] == "a cropped photo of the flawless metal_nut." and normal[1] == "a cropped photo of a flawless metal_nut."
    assert normal[22] == "a cropped photo of the perfect metal_nut."  # state-major
    assert abnormal[-1] == "a photo of a metal_nut with contamination for anomaly detection."
    assert build_prompts("metal_nut", "underscore_to_space")[0][0] == "a cropped photo of the flawless metal nut."


def test_text_truncation_is_exact(model):
    clip = model._model()
    from anomalens.backbones import encode_text_truncated

    sentences = build_prompts("pipe_fryum")[1][::20]
    tokens = model._tokenizer(sentences)
    with torch.inference_mode():
        assert int(tokens.argmax(-1).max()) + 1 < 77  # the cut is real
        assert torch.allclose(encode_text_truncated(clip, tokens), clip.encode_text(tokens), atol=1e-5)


def test_text_features_unit_columns_and_cached(model):
    T = model.text_features()
    assert T.shape == (model.embed_dim, 2) and torch.allclose(T.norm(dim=0), torch.ones(2), atol=1e-6)
    other = tiny()
    assert other.text_cache_key() == model.text_cache_key() and torch.equal(other.text_features(), T)
    assert tiny(class_name="cable").text_cache_key() != model.text_cache_key()
    assert tiny(rvs_dtype="float16").text_cache_key() != model.text_cache_key()


# ---- RVS ---------------------------------------------------------------------------------------------------------
def _unit(x):
    return x / np.linalg.norm(x, axis=-1, keepdims=True)


def test_rvs_dbscan_ignores_outliers_and_visa_preset_is_mean():
    rng = np.random.default_rng(0)
    centre = _unit(rng.normal(size=64))
    cluster = _unit(centre + 0.02 * rng.normal(size=(30, 64)))
    outliers = _unit(rng.normal(size=(5, 64)))
    data = np.concatenate([cluster, outliers]).astype(np.float32)
    db = representative_vector(data, "dbscan", 0.5, 15).numpy()
    mean = representative_vector(data, "mean").numpy()
    ref = _unit(cluster.mean(0))
    assert np.allclose(db, ref, atol=1e-6) and abs(np.linalg.norm(db) - 1) < 1e-6
    assert np.linalg.norm(mean - ref) > 10 * np.linalg.norm(db - ref)
    assert np.allclose(representative_vector(data, "dbscan", 1.5, 25), mean, atol=1e-6)  # VisA: one cluster = mean


def test_rvs_all_noise_falls_back_to_mean_with_warning():
    data = np.eye(20, 32, dtype=np.float32)  # pairwise distance √2 > 0.5: every point is noise
    with pytest.warns(RuntimeWarning, match="no cluster"):
        v = representative_vector(data, "dbscan", 0.5, 15)
    assert torch.allclose(v, representative_vector(data, "mean"))


def test_rvs_float16_reproduces_the_official_vector(model):
    from sklearn.cluster import DBSCAN

    normal, _ = model.prompt_embeddings()
    data = normal.numpy()
    # the official construction: DBSCAN on the unit embeddings, bincount/argmax, numpy mean, fp16 tensor, /= norm()
    labels = DBSCAN(eps=0.5, min_samples=15).fit(data).labels_
    if not (labels >= 0).any():  # random-init text tower: make the official path meaningful with a looser preset
        eps, mins = 1.5, 25
        labels = DBSCAN(eps=eps, min_samples=mins).fit(data).labels_
    else:
        eps, mins = 0.5, 15
    label = np.argmax(np.bincount(labels[labels >= 0]))
    official = torch.tensor(np.mean(data[labels == label], axis=0), dtype=torch.float16).squeeze()
    official /= official.norm()
    ours = representative_vector(data, "dbscan", eps, mins, dtype="float16")
    assert torch.equal(ours, official.float())
    f32 = representative_vector(data, "dbscan", eps, mins)
    assert 0 < (f32 - ours).abs().max() < 1e-3


# ---- the dual path --------------------------------------------------------------------------------------------
def _stock_blocks(visual, x):
    """Per block, with open_clip's own modules and no hooks: h_{b-1}, o_b (stock MHA), h_b."""
    with torch.inference_mode():
        h = visual.ln_pre(torch.cat([visual.class_embedding.view(1, 1, -1).expand(x.shape[0], -1, -1),
                                     visual.conv1(x).flatten(2).transpose(1, 2)], 1) + visual.positional_embedding)
        out = []
        for blk in visual.transformer.resblocks:
            a = blk.ln_1(h)
            o = blk.attn(a, a, a, need_weights=False)[0]
            nxt = blk(h)
            out.append({"in": h, "o": o, "h": nxt})
            h = nxt
    return out


def _naive_vv(attn, a):
    """Independent V-V attention: slice v rows of in_proj, loop heads, softmax(v vᵀ/√d) v, concat, W_o x + b_o."""
    D = a.shape[-1]
    H = attn.num_heads
    d = D // H
    v = a @ attn.in_proj_weight[2 * D :].T + attn.in_proj_bias[2 * D :]
    heads = []
    for i in range(H):
        vh = v[..., i * d : (i + 1) * d].double()
        logits = vh @ vh.transpose(-1, -2) / d ** 0.5
        assert torch.allclose(logits, logits.transpose(-1, -2))  # symmetric per head
        heads.append(torch.softmax(logits, -1) @ vh)
    return torch.cat(heads, -1).float() @ attn.out_proj.weight.T + attn.out_proj.bias


@pytest.mark.parametrize("ori_tap", ["official", "block_output"])
def test_dual_path_original_is_stock_clip_and_taps_follow_the_rule(model, images, ori_tap):
    clip = model._model()
    x = _normalised(model, images[:2])
    with torch.inference_mode():
        out = dual_path_forward(clip, x, 4, ori_tap, keep_blocks=True)
        stock = clip.encode_image(x)
    assert torch.allclose(out.image_embed, stock, atol=1e-5)
    ref = _stock_blocks(clip.visual, x)
    for b, r in enumerate(ref):
        assert torch.allclose(out.blocks[b]["h"], r["h"], atol=1e-5)
        assert torch.allclose(out.blocks[b]["o"], r["o"], atol=1e-5)
    for j, e in enumerate((2, 5, 8, 11)):
        expect = ref[e + 1]["in"] + ref[e + 1]["o"] if (ori_tap == "official" and j < 3) else ref[e]["h"]
        assert out.original[j].shape == (2, 37, model.width)
        assert torch.allclose(out.original[j], expect, atol=1e-5)
    if ori_tap == "official":
        assert (out.original[0] - ref[2]["h"]).abs().max() > 1e-3  # the aliasing is not a no-op


def test_surgery_attention_equals_naive_reference_and_stage_sums(model, images):
    clip = model._model()
    visual = clip.visual
    x = _normalised(model, images[:2])
    with torch.inference_mode():
        out = dual_path_forward(clip, x, 4, "official", keep_blocks=True)
        ref = _stock_blocks(visual, x)
        s = []
        for b, blk in enumerate(visual.transformer.resblocks):
            s.append(_naive_vv(blk.attn, blk.ln_1(ref[b]["in"])))
            assert torch.allclose(out.blocks[b]["s"], s[b], atol=1e-4)
        for j in range(4):
            S = s[3 * j] + s[3 * j + 1] + s[3 * j + 2]  # exactly k = 3 terms, no residual, no FFN
            S[:, 0] = out.original[j][:, 0]
            Z = F.normalize(visual.ln_post(S) @ visual.proj, dim=-1)
            assert torch.allclose(out.surgery[j], Z, atol=1e-4)
            assert torch.allclose(out.surgery[j].norm(dim=-1), torch.ones(2, 37), atol=1e-5)


# ---- heads ------------------------------------------------------------------------------------------------------
def _explicit_surgery(Z, T):
    """Official form: F[t,k,:] = w_k Z_t ⊙ T_k, R = mean_k F, Sim = Σ_c (F − R)."""
    p = torch.softmax(Z[:, 0] @ T, -1)
    w = p / p.mean(-1, keepdim=True)
    Fk = w[:, None, :, None] * Z[:, :, None, :] * T.T[None, None]
    return (Fk - Fk.mean(2, keepdim=True)).sum(-1), w


def test_feature_surgery_closed_form_equals_explicit():
    g = torch.Generator().manual_seed(1)
    Z = F.normalize(torch.randn(3, 10, 16, generator=g, dtype=torch.float64), dim=-1)
    T = F.normalize(torch.randn(16, 2, generator=g, dtype=torch.float64), dim=0)
    sim = feature_surgery(Z, T)
    ref, w = _explicit_surgery(Z, T)
    assert torch.allclose(sim, ref, atol=1e-12)
    assert torch.allclose(sim.sum(-1), torch.zeros(3, 10, dtype=torch.float64), atol=1e-12)
    assert torch.allclose(w.sum(-1), torch.full((3,), 2.0, dtype=torch.float64))
    same = torch.stack([T[:, 0], T[:, 0]], 1)
    assert feature_surgery(Z, same).abs().max() == 0


def test_sdp_pasted_defect_peaks_inside_and_row_major():
    g = 6
    T = F.normalize(torch.randn(16, 2, generator=torch.Generator().manual_seed(2)), dim=0)
    Z = T[:, 0].repeat(1, 1 + g * g, 1).clone()
    Zd = Z.clone()
    for r in range(1, 4):
        for c in range(2, 5):
            Zd[0, 1 + r * g + c] = T[:, 1]
    maps = [sdp_map(feature_surgery(z, T)[:, 1:, 1], 96) for z in (Z, Zd)]
    peak = np.unravel_index(int(maps[1][0].argmax()), (96, 96))
    assert 16 <= peak[0] < 64 and 32 <= peak[1] < 80
    assert maps[1].max() > maps[0].max()
    onehot = torch.zeros(1, g * g)
    onehot[0, 2 * g + 5] = 1.0
    ref = F.interpolate(onehot.view(1, 1, g, g), size=(96, 96), mode="bilinear", align_corners=False)[:, 0]
    assert torch.equal(sdp_map(onehot, 96), ref) and np.unravel_index(int(ref.argmax()), (96, 96))[0] // 16 == 2


def test_adapter_head_upsamples_align_corners_true_then_softmax():
    X = torch.randn(2, 36, 16, generator=torch.Generator().manual_seed(3))
    T = F.normalize(torch.randn(16, 2, generator=torch.Generator().manual_seed(4)), dim=0)
    logits = 100 * F.normalize(X, dim=-1) @ T
    ref = torch.softmax(F.interpolate(logits.permute(0, 2, 1).reshape(2, 2, 6, 6), size=(96, 96), mode="bilinear",
                                      align_corners=True), dim=1)
    assert torch.allclose(adapter_probabilities(X, T, 96), ref, atol=1e-6)
    zero = adapter_probabilities(torch.zeros(1, 36, 16), T, 96)
    assert torch.isfinite(zero).all()  # zero-init linears: epsilon in the normalisation


# ---- the estimator --------------------------------------------------------------------------------------------
def test_predict_scores_components_and_batch_equals_one_by_one(model, images):
    pred = model.predict(images)
    assert pred.anomaly_maps.shape == (4, 96, 96) and set(pred.components) == {"p_abn", "map_max"}
    assert np.allclose(pred.image_scores, pred.components["p_abn"] + pred.components["map_max"], atol=1e-12)
    assert np.allclose(pred.components["map_max"], pred.anomaly_maps.reshape(4, -1).max(1), atol=1e-6)
    for i in range(4):
        one = model.predict(images[i : i + 1])
        assert np.allclose(one.anomaly_maps[0], pred.anomaly_maps[i], atol=1e-5)
        assert abs(one.image_scores[0] - pred.image_scores[i]) < 1e-5
    again = model.predict(images)
    assert np.array_equal(again.anomaly_maps, pred.anomaly_maps)


def test_smoothing_is_scipy_gaussian(model, images):
    from scipy.ndimage import gaussian_filter

    raw = model.forward_maps(_normalised(model, images[:1]))["sdp"][0].double().numpy()
    pred = model.predict(images[:1]).anomaly_maps[0]
    assert np.allclose(pred, gaussian_filter(raw, 8.0, mode="reflect", truncate=4.0), atol=1e-6)


def test_minmax_score_is_evaluation_only_and_affine_invariant(model, images):
    pred = model.predict(images)
    s = clipad_minmax_scores(pred)
    p, m = pred.components["p_abn"], pred.components["map_max"]
    ref = (p - p.min()) / (p.max() - p.min()) + (m - m.min()) / (m.max() - m.min())
    assert np.allclose(s, ref)
    pred.components = {"p_abn": 3 * p + 7, "map_max": 0.5 * m - 2}
    assert np.allclose(clipad_minmax_scores(pred), s)
    assert not np.allclose(pred.image_scores, s)  # predict returns the raw sum


def test_non_square_grey_rgba_files_keep_their_aspect_and_paper_squashes(model, tmp_path):
    """Default geometry (auto) on a user's small non-square images: aspect kept (square tiles across the long side),
    maps over every pixel; geometry="paper" is the official squash (masks in the official geometry)."""
    from PIL import Image

    rng = np.random.default_rng(5)
    arr = (rng.random((60, 150, 3)) * 255).astype(np.uint8)
    Image.fromarray(arr).save(tmp_path / "rgb.png")
    Image.fromarray(arr[..., 0]).save(tmp_path / "grey.png")
    Image.fromarray(np.dstack([arr, np.full((60, 150), 255, np.uint8)])).save(tmp_path / "rgba.png")
    pred = model.predict([str(tmp_path / n) for n in ("rgb.png", "grey.png", "rgba.png")])
    assert pred.anomaly_maps.shape == (3, 96, 240) and np.isfinite(pred.anomaly_maps).all()
    assert [pred.map_at_original_size(i).shape for i in range(3)] == [(60, 150)] * 3
    paper = tiny(geometry="paper")
    squashed = paper.transform.image(Image.fromarray(arr))
    assert squashed.shape == (3, 96, 96)  # squash, not shorter-side + crop
    mask = np.zeros((60, 150), bool)
    mask[:, 140:] = True  # the right border survives the squash (a centre crop would drop it)
    m = paper.transform.mask(mask)
    assert m.shape == (96, 96) and m[:, -3:].all() and not m[:, :80].any()


def _random_adapters(model, seed=7):
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return StageAdapters(model.width, model.embed_dim, 4)


def test_adapter_round_trip_ours_and_official(model, images, tmp_path):
    from anomalens.models.clipad import save_adapters

    ad = _random_adapters(model)
    ours = save_adapters(tmp_path / "ours", ad, {"backbone": TINY["backbone"]})
    official = tmp_path / "train_on_visa.pth"
    torch.save({"linear_layers": ad.state_dict()}, official)
    preds = [tiny(variant="sdp+", adapter=str(p)).predict(images[:2]) for p in (ours, official)]
    assert np.array_equal(preds[0].anomaly_maps, preds[1].anomaly_maps)
    sdp = model.predict(images[:2])
    assert not np.allclose(preds[0].anomaly_maps, sdp.anomaly_maps)
    assert np.allclose(preds[0].components["p_abn"], sdp.components["p_abn"])  # same frozen CLIP
    # M_+ = M_SDP + Σ_j Q_j, smoothed
    m = tiny(variant="sdp+", adapter=str(ours))
    r = m.forward_maps(_normalised(m, images[:2]))
    from anomalens.ops import gaussian_blur

    assert np.allclose(gaussian_blur(r["sdp"] + r["ft"], 8.0).numpy(), preds[0].anomaly_maps, atol=1e-6)
    params = list(ad.parameters())  # W_0, b_0, W_1, b_1, ...
    ft = _literal_ft(m, images[:2], list(zip(params[::2], params[1::2])))
    assert torch.allclose(r["ft"].double(), ft, atol=1e-4)
    assert float(ft.std()) > 1e-3  # a map with structure, not a constant the check would match trivially


def _literal_ft(m, images, linears) -> torch.Tensor:
    """M_ft spelled out (spec §4) for the tiny model (96 px, 6×6 patches): per stage j, X_j = W_j O_j[:, 1:] + b_j,
    logits 100·cos(X_j, T), upsampled bilinearly (align_corners=True), Q_j = the abnormal softmax entry =
    sigmoid(logit_a − logit_n); summed over the stages. `linears`: [(W_j, b_j)] as plain tensors."""
    T = m.text_features().double()
    with torch.inference_mode():
        out = dual_path_forward(m._model(), _normalised(m, images), m.stages, m.ori_tap)
    ft = torch.zeros(len(images), 96, 96, dtype=torch.float64)
    for (w, b), o in zip(linears, out.original, strict=True):
        X = o[:, 1:].double() @ w.detach().double().T + b.detach().double()
        logits = 100.0 * (X / X.norm(dim=-1, keepdim=True)) @ (T / T.norm(dim=0, keepdim=True))
        up = F.interpolate(logits.permute(0, 2, 1).reshape(len(images), 2, 6, 6), size=(96, 96), mode="bilinear",
                           align_corners=True)
        ft += torch.sigmoid(up[:, 1] - up[:, 0])
    return ft


def _official_checkpoint(width: int, embed_dim: int, seed: int = 3) -> dict:
    """The official SDP+ checkpoint layout, written literally (ByChelsea/CLIP-AD, train.py saves
    torch.save({'linear_layers': LinearLayer.state_dict()}); models/model.py's LinearLayer holds
    fc = ModuleList of k nn.Linear(width, embed_dim), k = 4 stages): keys fc.{0..3}.weight (embed_dim, width) and
    fc.{0..3}.bias (embed_dim,), nothing else; not built from our own module."""
    g = torch.Generator().manual_seed(seed)
    layers = {}
    for j in range(4):
        layers[f"fc.{j}.weight"] = 0.05 * torch.randn(embed_dim, width, generator=g)
        layers[f"fc.{j}.bias"] = 0.05 * torch.randn(embed_dim, generator=g)
    return {"linear_layers": layers}


def test_official_adapter_layout_is_pinned(images, tmp_path):
    """Issue 25: an official checkpoint, its key names and shapes written out here, loads into SDP+ and drives M_ft
    exactly as its tensors say; for the real backbone (ViT-B-16+, 896 -> 640) the released files' shapes load too."""
    m0 = tiny()
    assert (m0.width, m0.embed_dim) == (64, 32)  # the tiny CLIP: vision width 64, embedding 32 (see _register_tiny_clip)
    ckpt = _official_checkpoint(64, 32)
    torch.save(ckpt, tmp_path / "train_on_visa.pth")
    m = tiny(variant="sdp+", adapter=str(tmp_path / "train_on_visa.pth"))
    layers = ckpt["linear_layers"]
    want = _literal_ft(m, images[:2], [(layers[f"fc.{j}.weight"], layers[f"fc.{j}.bias"]) for j in range(4)])
    assert torch.allclose(m.forward_maps(_normalised(m, images[:2]))["ft"].double(), want, atol=1e-4)

    real = _official_checkpoint(896, 640)
    torch.save(real, tmp_path / "train_on_mvtec.pth")
    big = anomalens.create("clipad", variant="sdp+", weights=None, adapter=str(tmp_path / "train_on_mvtec.pth"),
                           device="cpu")
    loaded = [p.detach() for p in big._stage_adapters().parameters()]  # in module order: W_0, b_0, ..., W_3, b_3
    want = [real["linear_layers"][f"fc.{j}.{kind}"] for j in range(4) for kind in ("weight", "bias")]
    assert len(loaded) == 8 and all(torch.equal(a, b) for a, b in zip(loaded, want))


def test_adapter_mismatch_and_missing_are_clear_errors(tmp_path):
    bad = tmp_path / "wide.pth"
    torch.save({"linear_layers": StageAdapters(896, 640, 4).state_dict()}, bad)
    with pytest.raises(anomalens.ModelFormatError, match="896 -> 640"):
        tiny(variant="sdp+", adapter=str(bad)).setup()
    junk = tmp_path / "junk.pth"
    torch.save({"model": 1}, junk)
    with pytest.raises(anomalens.ModelFormatError, match="linear_layers"):
        tiny(variant="sdp+", adapter=str(junk)).setup()
    with pytest.raises(anomalens.AnomalensError, match="needs adapter="):
        tiny(variant="sdp+").setup()
    with pytest.raises(anomalens.AnomalensError, match="variant"):
        tiny(variant="sdq")  # checked when built


@pytest.mark.parametrize("variant", ["sdp", "sdp+"])
def test_save_load_round_trip(images, tmp_path, variant):
    from anomalens.models.clipad import save_adapters

    kw = {}
    if variant == "sdp+":
        probe = tiny()
        kw["adapter"] = str(save_adapters(tmp_path / "ad", _random_adapters(probe, 9), {}))
    m = tiny(variant=variant, **kw).fit()
    before = m.predict(images[:2])
    m.save(tmp_path / "model")
    import shutil

    shutil.rmtree(tmp_path / "ad", ignore_errors=True)  # the saved model carries its adapters and text features
    loaded = anomalens.load(tmp_path / "model")
    after = loaded.predict(images[:2])
    assert np.array_equal(before.anomaly_maps, after.anomaly_maps) and np.array_equal(before.image_scores, after.image_scores)
    assert json.loads((tmp_path / "model" / "config.json").read_text())["settings"]["variant"] == variant


# ---- training ----------------------------------------------------------------------------------------------
def test_losses_match_their_definitions():
    g = torch.Generator().manual_seed(6)
    q2 = torch.softmax(torch.randn(2, 2, 8, 8, generator=g), 1)
    gt = (torch.rand(2, 8, 8, generator=g) > 0.7).float()
    pt = torch.where(gt.bool(), q2[:, 1].clamp(0) * (1 - 1e-5) + q2[:, 0] * 1e-5, q2[:, 0] * (1 - 1e-5) + q2[:, 1] * 1e-5) + 1e-5
    assert torch.allclose(focal_loss(q2, gt), (-(1 - pt) ** 2 * pt.log()).mean(), atol=1e-7)
    q = q2[:, 1]
    zero = torch.zeros_like(gt)
    assert torch.allclose(dice_loss(q, zero), (1 - 1 / (q.reshape(2, -1).sum(1) + 1)).mean(), atol=1e-7)


def test_training_loss_decreases_and_only_linears_get_gradients(model):
    g = torch.Generator().manual_seed(8)
    original = [torch.randn(2, 37, model.width, generator=g) for _ in range(4)]
    masks = torch.zeros(2, 48, 48)  # the head upsamples to the mask size
    masks[0, 10:25, 15:30] = 1
    T = model.text_features()
    ad = _random_adapters(model, 10)
    clip = model._model()
    clip.requires_grad_(True)
    opt = torch.optim.Adam(ad.parameters(), lr=3e-3)
    first = None
    for _ in range(25):
        loss = sdp_plus_loss(ad, original, T, masks)
        first = float(loss.detach()) if first is None else first
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert float(loss.detach()) < 0.7 * first
    assert all(p.grad is not None for p in ad.parameters()) and len(list(ad.parameters())) == 8
    assert all(p.grad is None for p in clip.parameters())
    clip.requires_grad_(False)


def test_train_cli_end_to_end_and_resume(synthetic_root, tmp_path, images):
    from typer.testing import CliRunner

    from anomalens.cli import app

    out = tmp_path / "adapters"
    args = ["train", "clipad", str(synthetic_root), "--dataset", "mvtec", "-o", str(out), "--category", "disc",
            "--epochs", "2", "--batch-size", "4", "--device", "cpu", "--val-fraction", "0.25",
            "--set", f"backbone={TINY['backbone']}", "--set", "weights=None", "--set", "image_size=96"]
    res = CliRunner().invoke(app, args)
    assert res.exit_code == 0, res.output
    assert "last epoch (2)" in res.output and "best on validation" in res.output
    report = json.loads((out / "training.json").read_text())
    assert [h["epoch"] for h in report["history"]] == [1, 2] and report["best"]["epoch"] in (1, 2)
    assert (out / "last" / "adapter.safetensors").is_file() and (out / "best" / "adapter.json").is_file()
    cache = next((out / "cache").iterdir())
    assert np.load(cache / "tokens.npy", mmap_mode="r").dtype == np.float16
    # resume: one more epoch continues from the epoch-2 checkpoint (history kept)
    res = CliRunner().invoke(app, [a if a != "2" else "3" for a in args] + ["--resume"])
    assert res.exit_code == 0, res.output
    report = json.loads((out / "training.json").read_text())
    assert [h["epoch"] for h in report["history"]] == [1, 2, 3]
    pred = tiny(variant="sdp+", adapter=str(out)).predict(images[:1])
    assert np.isfinite(pred.anomaly_maps).all()
    bad = CliRunner().invoke(app, ["train", "clipad", str(tmp_path / "nope"), "-o", str(out), "--dataset", "mvtec"])
    assert bad.exit_code == 2 and "not found" in bad.output


def test_default_weights_are_the_paper_tag_and_fail_fast_offline(monkeypatch):
    import time

    entry = anomalens.registry.get_entry("clipad")
    assert entry.defaults["backbone"] == "ViT-B-16-plus-240" and entry.defaults["weights"] == "laion400m_e31"
    assert entry.defaults["variant"] == "sdp" and entry.defaults["ori_tap"] == "official" and entry.defaults["image_size"] == 240
    monkeypatch.setenv("ANOMALENS_OFFLINE", "1")
    t0 = time.perf_counter()
    with pytest.raises(anomalens.WeightsError, match="laion400m_e31"):
        anomalens.create("clipad", class_name="bottle", device="cpu").setup()
    assert time.perf_counter() - t0 < 10


def test_local_weights_file_loads_the_same_model(model, images, tmp_path):
    from safetensors.torch import save_file

    path = tmp_path / "clip.safetensors"
    save_file({k: v.contiguous() for k, v in model._model().state_dict().items()}, str(path))
    other = tiny(weights=str(path), seed=123)  # a different init seed: the file must win
    assert np.allclose(other.predict(images[:1]).anomaly_maps, model.predict(images[:1]).anomaly_maps, atol=1e-5)


def test_evaluation_hook_gives_the_paper_score(model, synthetic_root):
    from anomalens.data import MVTecAD

    report = anomalens.evaluate(model, MVTecAD(synthetic_root, "disc", "test"))
    pred = report.prediction
    assert set(pred.components) == {"p_abn", "map_max", "model_score"} and "aupro" in report.metrics
    # the paper's score spelled out (spec §3.6): per-category min–max of p_abn and of map_max, summed
    p, mx = (np.asarray(pred.components[c], dtype=np.float64) for c in ("p_abn", "map_max"))
    assert np.ptp(p) > 0 and np.ptp(mx) > 0
    paper = (p - p.min()) / np.ptp(p) + (mx - mx.min()) / np.ptp(mx)
    assert np.allclose(model.evaluation_scores(pred), paper, rtol=0, atol=1e-12)
    assert np.allclose(clipad_minmax_scores(pred), paper, rtol=0, atol=1e-12)
    # evaluate() scores the image metrics with the hook; the model's own raw sum is kept beside it
    assert np.allclose(pred.image_scores, paper, rtol=0, atol=1e-12)
    assert np.allclose(pred.components["model_score"], pred.components["p_abn"] + pred.components["map_max"])
    from anomalens import metrics

    raw = metrics.image_metrics(pred.components["model_score"], pred.gt_labels)
    hooked = metrics.image_metrics(clipad_minmax_scores(pred), pred.gt_labels)
    assert report.raw_metrics == pytest.approx(raw) and {k: report.metrics[k] for k in hooked} == pytest.approx(hooked)


def test_train_adapters_with_target_validation(synthetic_root, tmp_path):
    from anomalens.models.clipad.training import train_adapters

    rep = train_adapters(synthetic_root, tmp_path / "ad", "mvtec", categories=["weave"], val_root=synthetic_root,
                         val_dataset="mvtec", val_categories=["grain"], epochs=1, batch_size=8, device="cpu",
                         **{k: v for k, v in TINY.items() if k != "device"})
    v = rep["history"][0]["validation"]
    assert set(v["per_category"]) == {"grain"} and 0 <= v["mean"]["image_auroc"] <= 1
    assert rep["best"]["epoch"] == 1 and rep["validation"].startswith("mvtec test split")
    assert rep["n_train"] == 14  # the whole weave test split: no holdout when a target validates
