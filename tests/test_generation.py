"""AnomalyDiffusion invariants (spec §9) on the tiny random-init components; no downloads, CPU, seconds."""
from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import pytest
import torch

pytest.importorskip("diffusers")
pytest.importorskip("transformers")

import anomalens.generation as G  # noqa: E402
from anomalens.errors import AnomalensError, DataError, ModelFormatError, WeightsError  # noqa: E402

KEY = "widget+crack"


@pytest.fixture(scope="module", autouse=True)
def _one_thread():
    """Tiny convolutions are faster (and steadier on a shared machine) on one thread."""
    old = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(old)


@pytest.fixture(scope="module")
def base():
    return G.build_tiny()


def make_pipe(base, **cfg):
    pipe = G.AnomalyDiffusionPipeline.from_config(G.GeneratorConfig.tiny(**cfg), device="cpu", base=base)
    pipe.init_embedding("anomaly", KEY)
    pipe.init_embedding("mask", KEY)
    return pipe


def square_masks(B=2, size=64):
    m = torch.zeros(B, 1, size, size)
    m[0, :, 16:40, 16:40] = 1
    if B > 1:
        m[1:, :, 30:60, 8:30] = 1
    return m


# ---- §9.1 token splice ----------------------------------------------------------------------------------------------
def test_token_splice_positions_shift_and_truncation():
    T, D = 10, 3
    emb = torch.arange(2 * T * D, dtype=torch.float32).view(2, T, D)
    ins = torch.full((4, D), -1.0)
    out, spans = G.splice_tokens(emb, torch.tensor([3, -1]), [ins, ins])
    assert out.shape == emb.shape
    assert torch.equal(out[0, :3], emb[0, :3])  # before p unchanged
    assert torch.equal(out[0, 3:7], ins)  # inserted block
    assert torch.equal(out[0, 7:], emb[0, 4:4 + 3])  # rest shifted by len-1, truncated at T
    assert spans[0].tolist() == [3, 7]
    assert torch.equal(out[1], emb[1]) and spans[1].tolist() == [-1, -1]  # no placeholder: unchanged


def test_sae_conditioning_shapes_and_per_type_rows(base):
    pipe = make_pipe(base)
    pipe.init_embedding("anomaly", "widget+scratch")
    with torch.no_grad():
        pipe.anomaly_embeddings["widget+scratch"].add_(1.0)
    m = square_masks(2)
    ids = pipe.tokenize(["a photo of a *"] * 2)
    p = int((ids[0] == pipe.placeholder_id).nonzero())
    inserts = pipe.anomaly_inserts([KEY, "widget+scratch"], m)
    k, n, D = pipe.config.num_anomaly_tokens, pipe.config.num_spatial_tokens, pipe.token_dim
    assert inserts[0].shape == (k + n, D)
    assert torch.equal(inserts[0][:k], pipe.anomaly_embeddings[KEY])  # anomaly tokens first
    spatial = pipe.spatial_encoder(m)
    assert spatial.shape == (2, n, D)
    assert torch.allclose(inserts[1][k:], spatial[1])  # spatial tokens second
    ctx, spans = pipe.encode_conditioning(["a photo of a *"] * 2, inserts)
    assert ctx.shape == (2, 77, D)
    assert spans.tolist() == [[p, p + k + n]] * 2
    assert not torch.allclose(ctx[0], ctx[1])  # different types / masks -> different rows
    ctx_plain, sp = pipe.encode_conditioning([""], [None])
    ref = pipe.text_encoder(pipe.tokenize([""])).last_hidden_state
    assert torch.allclose(ctx_plain, ref) and sp.tolist() == [[-1, -1]]


def test_real_size_spatial_encoder_shapes_on_meta_device():
    with torch.device("meta"):
        enc = G.SpatialEncoder(1280, 4, 256)
        out = enc(torch.zeros(2, 1, 256, 256))
    assert out.shape == (2, 4, 1280)
    assert len(enc.body) == 24 and enc.taps == [2, 6, 20, 23]  # IR-50 c1/c2/c3 taps of the official encoder
    assert len(enc.styles[0].convs) == 12  # log2(64) = 6 stride-2 convs (+ activations)


# ---- §9.3 masked loss -----------------------------------------------------------------------------------------------
def test_masked_loss_properties():
    g = torch.Generator().manual_seed(0)
    pred, eps = torch.randn(2, 4, 8, 8, generator=g), torch.randn(2, 4, 8, 8, generator=g)
    zeros, ones = torch.zeros(2, 1, 8, 8), torch.ones(2, 1, 8, 8)
    assert float(G.masked_diffusion_loss(pred, eps, zeros)) == 0.0
    assert torch.allclose(G.masked_diffusion_loss(pred, eps, ones), torch.nn.functional.mse_loss(pred, eps))
    half = ones.clone()
    half[..., 4:] = 0
    p = pred.clone().requires_grad_(True)
    G.masked_diffusion_loss(p, eps, half).backward()
    assert torch.all(p.grad[..., 4:] == 0) and torch.all(p.grad[..., :4] != 0)
    ratio = float(G.masked_diffusion_loss(pred, eps, half) / G.masked_diffusion_loss(pred, eps, ones))
    assert 0.3 < ratio < 0.7  # mean over all positions, not normalised by the mask area


def test_latent_mask_threshold_keeps_one_latent_cell():
    m = torch.zeros(1, 1, 64, 64)
    m[..., 24:32, 40:48] = 1  # one 8x8 cell aligned with the latent grid
    lat = G.latent_mask(m, 8)
    assert lat.shape == (1, 1, 8, 8) and lat.sum() == 1 and lat[0, 0, 3, 5] == 1


# ---- §9.4 gradient flow -----------------------------------------------------------------------------------------
def test_gradient_flow_only_into_learned_parts(base):
    pipe = make_pipe(base, batch_size=2, augment=False)
    pipe.init_embedding("anomaly", "widget+absent")
    frozen = {n: p.detach().clone() for mod in (pipe.unet, pipe.vae, pipe.text_encoder) for n, p in mod.named_parameters()}
    absent = pipe.anomaly_embeddings["widget+absent"].detach().clone()
    present = pipe.anomaly_embeddings[KEY].detach().clone()
    enc_before = [p.detach().clone() for p in pipe.spatial_encoder.parameters()]
    tr = G.GeneratorTrainer(pipe, KEY, torch.rand(2, 3, 64, 64) * 2 - 1, square_masks(2), torch.Generator().manual_seed(0))
    tr.opt_sae.add_param_group({"params": [pipe.anomaly_embeddings["widget+absent"]]})
    tr.sae_step()
    assert all(not p.requires_grad for mod in (pipe.unet, pipe.vae, pipe.text_encoder) for p in mod.parameters())
    for mod in (pipe.unet, pipe.vae, pipe.text_encoder):
        for n, p in mod.named_parameters():
            assert torch.equal(p, frozen[n]), n
    assert pipe.anomaly_embeddings["widget+absent"].grad is None
    assert torch.equal(pipe.anomaly_embeddings["widget+absent"], absent)
    assert not torch.equal(pipe.anomaly_embeddings[KEY], present)
    changed = [not torch.equal(a, b) for a, b in zip(enc_before, pipe.spatial_encoder.parameters())]
    assert sum(changed) > 0.9 * len(changed)


# ---- §9.5 overfit -----------------------------------------------------------------------------------------------
def test_tiny_overfit_loss_decreases():
    base = G.build_tiny()
    with torch.no_grad():  # a random UNet barely listens to its context; amplify cross-attention so it can overfit
        for name, mod in base.unet.named_modules():
            if name.endswith("attn2"):
                mod.to_out[0].weight.mul_(30)
    pipe = make_pipe(base, batch_size=2, augment=False)
    g = torch.Generator()
    tr = G.GeneratorTrainer(pipe, KEY, torch.rand(2, 3, 64, 64) * 2 - 1, square_masks(2), g)
    sae, mask = [], []
    for _ in range(40):
        g.manual_seed(0)  # fixed batch, t and noise: pure overfitting of one target
        sae.append(tr.sae_step())
    for _ in range(30):
        g.manual_seed(0)
        mask.append(tr.mask_step())
    assert np.mean(sae[-5:]) < 0.92 * np.mean(sae[:5])
    assert np.mean(mask[-5:]) < np.mean(mask[:5]) - 5e-3
    assert all(b <= a + 1e-4 for a, b in zip(sae[::5], sae[5::5]))


# ---- §9.6-9.8 AAR -----------------------------------------------------------------------------------------------
def test_dilation_radius_and_dilated_mask():
    assert (G.dilation_radius(996), G.dilation_radius(24), G.dilation_radius(25)) == (8, 0, 1)
    m = torch.zeros(1, 1, 8, 8)
    m[..., 3, 4] = 1
    d = G.dilate(m, 1)
    assert torch.all(d >= m) and d.sum() == 9
    assert torch.equal(G.dilate(m, 0), m)
    assert G.dilate(m, 50).sum() == 64  # radius clipped to the map


def test_official_aar_weights():
    g = torch.Generator().manual_seed(0)
    z_t, z_y = torch.randn(2, 4, 8, 8, generator=g), torch.randn(2, 4, 8, 8, generator=g)
    M = torch.zeros(2, 1, 8, 8)
    M[..., 2:6, 2:6] = 1
    w = G.official_weights(z_t, z_y, M)
    assert w.shape == (2, 8, 8) and w.min() >= 1 and w.max() <= 1.5
    assert torch.all(w[M[:, 0] == 0] == 1)
    raw = G.official_weights(z_t, z_y, M, w_max=float("inf"))  # before the upper clip
    d = ((M * (z_t - z_y)) ** 2).mean(1)
    g_ = M[:, 0] / d.clamp_min(1e-12)
    unclipped = M[:, 0].sum((1, 2), keepdim=True) * g_ / g_.sum((1, 2), keepdim=True)
    assert torch.allclose(unclipped[M[:, 0] == 1].view(2, -1).mean(1), torch.ones(2))  # linear normalisation
    assert torch.allclose(raw, torch.where(M[:, 0] == 1, unclipped.clamp_min(1), torch.ones_like(raw)))
    same = G.official_weights(z_y.clone(), z_y, M)
    assert torch.all(same == 1)  # d == 0 everywhere -> no re-weighting
    # monotone: swapping two pixels' distances swaps their weights
    z2 = z_t.clone()
    z2[:, :, 2, 2], z2[:, :, 3, 3] = z_t[:, :, 3, 3], z_t[:, :, 2, 2]
    y2 = z_y.clone()
    y2[:, :, 2, 2], y2[:, :, 3, 3] = z_y[:, :, 3, 3], z_y[:, :, 2, 2]
    w2 = G.official_weights(z2, y2, M, w_max=float("inf"))
    assert torch.allclose(w2[:, 2, 2], raw[:, 3, 3]) and torch.allclose(w2[:, 3, 3], raw[:, 2, 2])
    dd = d[0][M[0, 0] == 1]
    ww = raw[0][M[0, 0] == 1]
    order = torch.argsort(dd)
    assert torch.all(ww[order][:-1] >= ww[order][1:] - 1e-6)  # smaller distance -> larger weight


def test_paper_aar_weights():
    g = torch.Generator().manual_seed(1)
    y, x0 = torch.rand(1, 3, 16, 16, generator=g), torch.rand(1, 3, 16, 16, generator=g)
    m = torch.zeros(1, 1, 16, 16)
    m[..., 4:10, 4:12] = 1
    w = G.paper_weights(x0, y, m)
    assert torch.isclose(w.sum(), m.sum())
    assert torch.all(w[m[:, 0] == 0] == 0)
    d = ((m * y - m * x0) ** 2).sum(1)[m[:, 0] == 1]
    ww = w[m[:, 0] == 1]
    assert ww[torch.argmin(d)] == ww.max() and ww[torch.argmax(d)] == ww.min()


def _cross_attn_layers(unet):
    return [m for n, m in unet.named_modules() if n.endswith("attn2")]


def test_aar_processor_uniform_weights_equals_stock_processor(base):
    from diffusers.models.attention_processor import AttnProcessor

    unet = base.unet
    g = torch.Generator().manual_seed(0)
    z, ctx = torch.randn(2, 4, 8, 8, generator=g), torch.randn(2, 77, 32, generator=g)
    t = torch.tensor(500)
    state = G.AARState(weights=torch.ones(2, 8, 8), spans=torch.tensor([[5, 17], [6, 18]]))
    saved = dict(unet.attn_processors)
    try:
        names = G.install_aar(unet, state)
        assert len(names) == len(_cross_attn_layers(unet)) >= 3  # every cross-attention: down, mid and up
        with torch.no_grad():
            ours = unet(z, t, encoder_hidden_states=ctx).sample
            state.weights = torch.full((2, 8, 8), 1.4)
            weighted = unet(z, t, encoder_hidden_states=ctx).sample  # (8x8 and the 4x4 mid block are resized)
            unet.set_attn_processor(AttnProcessor())
            stock = unet(z, t, encoder_hidden_states=ctx).sample
    finally:
        unet.set_attn_processor(saved)
    assert torch.allclose(ours, stock, atol=1e-5)
    assert not torch.allclose(weighted, stock, atol=1e-4)


def _probe_attention(mode, w, include_cls=True):
    """A one-head attention whose output channel 3 is the probability mass on columns flagged in the context."""
    from diffusers.models.attention_processor import Attention

    attn = Attention(query_dim=4, cross_attention_dim=4, heads=1, dim_head=4, bias=False)
    with torch.no_grad():
        for lin in (attn.to_q, attn.to_k, attn.to_v, attn.to_out[0]):
            lin.weight.copy_(torch.eye(4))
        attn.to_out[0].bias.zero_()
    hs = torch.ones(1, 4, 4)  # 4 query pixels (2x2), positive
    ctx = torch.ones(1, 6, 4) * 0.5
    ctx[0, 2:4, 3] = 1.0  # columns 2,3 = the anomaly span; channel 3 flags them
    ctx[0, [0, 1, 4, 5], 3] = 0.0
    ctx[0, 2:4, :3] = 1.0
    state = G.AARState(weights=torch.full((1, 2, 2), w), spans=torch.tensor([[2, 4]]), mode=mode,
                       include_cls_column=include_cls)
    with torch.no_grad():
        return G.AARAttnProcessor(state)(attn, hs, ctx)[0, :, 3], state, attn, hs, ctx


def test_aar_increases_attention_on_anomaly_tokens():
    for mode in ("official", "paper"):
        base_mass = _probe_attention(mode, 1.0)[0]
        more = _probe_attention(mode, 1.5)[0]
        assert torch.all(more > base_mass + 1e-4), mode


def test_aar_column_factor_touches_only_span_and_cls():
    st = G.AARState(weights=torch.full((1, 2, 2), 1.3), spans=torch.tensor([[2, 4]]))
    proc = G.AARAttnProcessor(st)
    f = proc._column_factor(4, 6, 1, "cpu", torch.float32)[0]
    assert torch.allclose(f[:, [0, 2, 3]], torch.full((4, 3), 1.3))
    assert torch.all(f[:, [1, 4, 5]] == 1)
    st.include_cls_column = False
    assert torch.all(proc._column_factor(4, 6, 1, "cpu", torch.float32)[0][:, 0] == 1)


# ---- §9.9 blending / alignment ------------------------------------------------------------------------------------
class StubUNet(torch.nn.Module):
    """Stands in for the UNet: eps = 0.1 * z (deterministic), records nothing itself."""

    def __init__(self, real):
        super().__init__()
        self.config = real.config
        self.dtype = torch.float32

    @property
    def attn_processors(self):
        return {}

    def forward(self, z, t, encoder_hidden_states=None, **kw):
        from types import SimpleNamespace

        return SimpleNamespace(sample=0.1 * z)


@pytest.mark.parametrize("use_aar", [False, True])
def test_blending_keeps_background_on_the_noisy_normal_latent(base, use_aar, monkeypatch):
    monkeypatch.setattr(G.pipeline, "install_aar", lambda unet, state: [])
    stub_base = G.BaseComponents(StubUNet(base.unet), base.vae, base.text_encoder, base.tokenizer, base.scheduler)
    pipe = make_pipe(stub_base)
    m = square_masks(1)
    seen = []
    out = pipe(torch.rand(1, 3, 64, 64), masks=m, num_inference_steps=5, generator=torch.Generator().manual_seed(0),
               use_aar=use_aar, callback=seen.append, progress=False)
    assert len(seen) == 5
    m_lat = G.latent_mask(m, 8)
    for rec in seen:
        M = rec["blend_mask"]
        expect = pipe.scheduler.add_noise(rec["z_y"], rec["noise"], torch.tensor([rec["t"]]))
        outside = M.expand_as(rec["latents"]) == 0
        assert torch.allclose(rec["latents"][outside], expect[outside])
        if use_aar:
            assert torch.equal(M, G.dilate(m_lat, G.dilation_radius(rec["t"], 5)))
        else:
            assert torch.equal(M, m_lat)
    assert torch.equal(out.masks, m)  # the returned mask is the input mask, not the dilated one
    assert out.images.shape == (1, 3, 64, 64) and 0 <= out.images.min() and out.images.max() <= 1


# ---- §9.10 determinism --------------------------------------------------------------------------------------------
def test_same_seed_same_output_different_seed_differs(base):
    pipe = make_pipe(base)
    y, m = torch.rand(2, 3, 64, 64, generator=torch.Generator().manual_seed(3)), square_masks(2)

    def run(seed, **kw):
        return pipe(y, masks=m, num_inference_steps=4, generator=torch.Generator().manual_seed(seed), progress=False, **kw)

    a, b, c = run(0, use_aar=True), run(0, use_aar=True), run(1, use_aar=True)
    assert torch.equal(a.images, b.images) and not torch.allclose(a.images, c.images)
    assert not torch.allclose(a.images, run(0, use_aar=False).images)  # AAR changes the result


# ---- §9.11 mask post-processing -------------------------------------------------------------------------------------
def test_mask_binarisation_and_border_rejection():
    dec = torch.full((3, 3, 32, 32), -1.0)
    dec[0, :, 10:20, 10:20] = 0.9  # centred blob -> accepted
    dec[1, :, 0, :] = 1.0  # a full border row -> rejected
    dec[2, 0, 5:9, 5:9] = 1.0  # only one channel bright: mean below 0.8 -> empty
    m = G.binarize_mask_images(dec, 0.8)
    assert set(m.unique().tolist()) <= {0.0, 1.0}
    assert m[0].sum() == 100 and m[2].sum() == 0
    assert G.border_ok(m).tolist() == [True, False, True]
    edge = torch.zeros(1, 1, 32, 32)
    edge[0, 0, 5:15, 31] = 1  # 10 <= 32/3 border pixels: still fine
    assert G.border_ok(edge).tolist() == [True]
    edge[0, 0, 5:16, 31] = 1
    assert G.border_ok(edge).tolist() == [False]


def test_mask_sampler_returns_binary_masks(base):
    pipe = make_pipe(base)
    ms = pipe.sample_masks(None, 2, generator=torch.Generator().manual_seed(0), num_inference_steps=3,
                           reject_empty=False, progress=False)
    assert ms.shape == (2, 1, 64, 64) and set(ms.unique().tolist()) <= {0.0, 1.0}
    pipe.config.mask_max_batches = 1
    pipe.config.mask_threshold = 2.0  # nothing can pass: one clear error, no endless loop
    with pytest.raises(AnomalensError, match="widget\\+crack"):
        pipe.sample_masks(None, 1, num_inference_steps=2, progress=False)


# ---- §9.12 split --------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("n", [3, 7, 10, 17, 30])
def test_split_first_third(n):
    tr_code, te = G.split_ids(n, "code")
    tr_strict, te2 = G.split_ids(n, "strict")
    assert te == te2 == list(range(n // 3, n))
    assert tr_code == list(range(0, n // 3 + 1))
    assert tr_strict == list(range(0, n // 3))
    assert set(tr_code) & set(te) == {n // 3}  # the official off-by-one overlap
    assert not set(tr_strict) & set(te)


# ---- save / load, official import, base loading -------------------------------------------------------------------
def test_save_load_round_trip(base, tmp_path):
    pipe = make_pipe(base)
    with torch.no_grad():
        pipe.anomaly_embeddings[KEY].add_(0.5)
    pipe.save_pretrained(tmp_path / "gen")
    assert not list((tmp_path / "gen").rglob("*.bin")) and not list((tmp_path / "gen").rglob("*.pt"))
    back = G.AnomalyDiffusionPipeline.from_pretrained(tmp_path / "gen", device="cpu")
    assert back.defects == [KEY]
    assert torch.equal(back.anomaly_embeddings[KEY], pipe.anomaly_embeddings[KEY])
    y, m = torch.rand(1, 3, 64, 64), square_masks(1)
    kw = dict(masks=m, num_inference_steps=3, progress=False)
    a = pipe(y, generator=torch.Generator().manual_seed(0), **kw)
    b = back(y, generator=torch.Generator().manual_seed(0), **kw)
    for mod in ("unet", "vae", "text_encoder", "spatial_encoder"):
        sa, sb = getattr(pipe, mod).state_dict(), getattr(back, mod).state_dict()
        assert sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa), mod
    assert torch.allclose(a.images, b.images, atol=1e-5)  # two model instances: float-level kernel differences only
    (tmp_path / "gen" / "spatial_encoder.safetensors").write_bytes(b"garbage")
    with pytest.raises(ModelFormatError, match="spatial_encoder.safetensors"):
        G.AnomalyDiffusionPipeline.from_pretrained(tmp_path / "gen", device="cpu")


def test_official_checkpoint_import(base, tmp_path):
    donor = make_pipe(base)
    emb = torch.randn(4, 32)  # the release uses k = 4
    torch.save({"string_to_token": {"*": 5}, "string_to_param": {"bottle+broken_large": emb}}, tmp_path / "embeddings.pt")
    torch.save({"string_to_token": {"*": 5}, "string_to_param": {"*": torch.randn(16, 32)}}, tmp_path / "mask.pt")
    sd = {f"module.{k}": (v + 0.01 if v.is_floating_point() else v.clone()) for k, v in donor.spatial_encoder.state_dict().items()}
    torch.save(sd, tmp_path / "spatial_encoder.pt")
    pipe = make_pipe(base)
    assert pipe.import_official_embeddings(tmp_path / "embeddings.pt") == ["bottle+broken_large"]
    assert torch.equal(pipe.anomaly_embeddings["bottle+broken_large"], emb)
    pipe.import_official_embeddings(tmp_path / "mask.pt", kind="mask", key="bottle+broken_large")
    assert pipe.mask_embeddings["bottle+broken_large"].shape == (16, 32)
    pipe.import_official_spatial_encoder(tmp_path / "spatial_encoder.pt")
    for k, v in pipe.spatial_encoder.state_dict().items():
        assert torch.equal(v, sd["module." + k]), k
    out = pipe(torch.rand(1, 3, 64, 64), defect="broken_large", masks=square_masks(1), num_inference_steps=2,
               progress=False)
    assert out.images.shape == (1, 3, 64, 64)
    torch.save({"weights": torch.nn.Linear(2, 2)}, tmp_path / "pickled.pt")  # a module needs pickle: refused
    with pytest.raises(ModelFormatError, match="pickled.pt"):
        pipe.import_official_embeddings(tmp_path / "pickled.pt")


def test_ldm_bert_key_mapping_loads_into_ldmbert(base):
    sd = base.text_encoder.state_dict()
    inv = {v: k for k, v in G.components.ldm_bert_key_map(2).items()}
    original = {inv[k]: v.clone() for k, v in sd.items() if k in inv}
    converted = G.components.convert_ldm_bert_state_dict(original, n_layers=2)
    missing = set(sd) - set(converted)
    assert all(k.startswith("to_logits") for k in missing)
    for k, v in converted.items():
        assert torch.equal(v, sd[k])
    del original[next(iter(original))]
    with pytest.raises(WeightsError):
        G.components.convert_ldm_bert_state_dict(original, n_layers=2)


def test_missing_real_base_is_one_clear_error(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    with pytest.raises(WeightsError, match="ldm-text2im-large-256") as exc:
        G.load_base("CompVis/ldm-text2im-large-256")
    assert "\n" not in str(exc.value)
    with pytest.raises(WeightsError, match="nope"):
        G.load_base(str(tmp_path / "nope"))
    (tmp_path / "ldm" / "unet").mkdir(parents=True)
    with pytest.raises(WeightsError, match="vqvae"):
        G.load_base(str(tmp_path / "ldm"))


# ---- training files + CLI end to end ------------------------------------------------------------------------------
def _write_png(path: Path, arr: np.ndarray) -> None:
    from PIL import Image

    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(arr).save(path)


@pytest.fixture()
def mvtec_root(tmp_path):
    """widget/{train/good (3), test/good (2), test/crack (6), ground_truth/crack (6 masks)} at 64x64."""
    rng = np.random.default_rng(0)
    root = tmp_path / "mvtec"
    for i in range(3):
        _write_png(root / "widget" / "train" / "good" / f"{i:03d}.png", rng.integers(0, 255, (64, 64, 3), dtype=np.uint8))
    for i in range(2):
        _write_png(root / "widget" / "test" / "good" / f"{i:03d}.png", rng.integers(0, 255, (64, 64, 3), dtype=np.uint8))
    for i in range(6):
        img = rng.integers(0, 255, (64, 64, 3), dtype=np.uint8)
        m = np.zeros((64, 64), np.uint8)
        m[10 + 3 * i:30 + 3 * i, 20:40] = 255
        _write_png(root / "widget" / "test" / "crack" / f"{i:03d}.png", img)
        _write_png(root / "widget" / "ground_truth" / "crack" / f"{i:03d}_mask.png", m)
    return root


def test_training_pairs_are_the_first_third_and_bad_masks_are_named(mvtec_root):
    pairs = G.training_pairs(mvtec_root, "widget", "crack")
    assert [p.name for p in pairs.images] == ["000.png", "001.png", "002.png"]  # ids 0..6//3 (code mode)
    assert [p.name for p in G.training_pairs(mvtec_root, "widget", "crack", "strict").images] == ["000.png", "001.png"]
    bad = mvtec_root / "widget" / "ground_truth" / "crack" / "001_mask.png"
    _write_png(bad, np.zeros((32, 32), np.uint8))
    with pytest.raises(DataError, match="001_mask.png"):
        G.data.load_pairs(pairs, 64)
    with pytest.raises(DataError, match="scratch"):
        G.training_pairs(mvtec_root, "widget", "scratch")


def test_resume_matches_an_uninterrupted_run(mvtec_root, tmp_path):
    kw = dict(config="tiny", device="cpu", progress=False, seed=5)
    full = G.train(mvtec_root, "widget", "crack", tmp_path / "a", steps=4, mask_steps=2, **kw)
    G.train(mvtec_root, "widget", "crack", tmp_path / "b", steps=2, mask_steps=0, **kw)
    resumed = G.train(mvtec_root, "widget", "crack", tmp_path / "b", steps=4, mask_steps=2, resume=True,
                      device="cpu", progress=False)
    assert torch.equal(full.anomaly_embeddings[KEY], resumed.anomaly_embeddings[KEY])
    assert torch.equal(full.mask_embeddings[KEY], resumed.mask_embeddings[KEY])
    for a, b in zip(full.spatial_encoder.state_dict().values(), resumed.spatial_encoder.state_dict().values()):
        assert torch.equal(a, b)
    with pytest.raises(AnomalensError, match="--resume"):
        G.train(mvtec_root, "widget", "crack", tmp_path / "a", steps=4, **kw)


def _digest(folder: Path) -> dict:
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*.png"))}


def test_cli_train_generate_end_to_end(mvtec_root, tmp_path, monkeypatch):
    from typer.testing import CliRunner

    from anomalens.cli.main import app

    runner = CliRunner()
    gen = tmp_path / "gen"
    r = runner.invoke(app, ["train-generator", str(mvtec_root), "--category", "widget", "--defect", "crack", "-o", str(gen),
                            "--config", "tiny", "--steps", "3", "--seed", "1", "--device", "cpu"])
    assert r.exit_code == 0, r.output
    assert (gen / "anomalydiffusion.json").is_file() and (gen / "checkpoint" / "state.safetensors").is_file()
    good = str(mvtec_root / "widget" / "train" / "good")
    masks = str(mvtec_root / "widget" / "ground_truth" / "crack")
    args = ["generate", str(gen), good, "-n", "3", "--steps", "2", "--seed", "7", "--masks", masks, "--device", "cpu"]
    out1, out2 = tmp_path / "out1", tmp_path / "out2"
    assert runner.invoke(app, args + ["-o", str(out1)]).exit_code == 0
    assert runner.invoke(app, args + ["-o", str(out2)]).exit_code == 0
    d1 = _digest(out1)
    assert sorted(d1) == ["ground_truth/crack/000_mask.png", "ground_truth/crack/001_mask.png",
                          "ground_truth/crack/002_mask.png", "test/crack/000.png", "test/crack/001.png",
                          "test/crack/002.png"]
    assert d1 == _digest(out2)  # same seed, same bytes
    from PIL import Image

    img, msk = Image.open(out1 / "test/crack/001.png"), np.asarray(Image.open(out1 / "ground_truth/crack/001_mask.png"))
    assert img.size == msk.shape[::-1] and set(np.unique(msk).tolist()) <= {0, 255} and msk.max() == 255
    # the output is a dataset anomalens reads
    from anomalens.data import MVTecAD

    ds = MVTecAD(tmp_path, "out1", split="test")
    assert len(ds) == 3 and ds.has_masks
    # refuses to overwrite, unless --force
    r = runner.invoke(app, args + ["-o", str(out1)])
    assert r.exit_code == 2 and "--force" in r.output
    assert runner.invoke(app, args + ["-o", str(out1), "--force", "--seed", "8"]).exit_code == 0
    assert _digest(out1) != d1
    # one clear line for a missing generator folder
    r = runner.invoke(app, ["generate", str(tmp_path / "missing"), good, "-n", "1", "-o", str(tmp_path / "o3")])
    assert r.exit_code == 2 and "missing" in r.output and "Traceback" not in r.output
    json.loads((gen / "anomalydiffusion.json").read_text())  # intact
    # evaluation on the generated set: IS / IC-LPIPS weights absent -> reported as errors; downstream runs
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path / "hub"))
    ev = tmp_path / "eval"
    r = runner.invoke(app, ["evaluate-generator", str(gen), str(mvtec_root), "--generated", str(out2), "--epochs", "1",
                            "-o", str(ev), "--device", "cpu"])
    assert r.exit_code == 0, r.output
    rep = json.loads((ev / "generator_eval.json").read_text())
    assert rep["inception_score"].startswith("error:") and rep["ic_lpips"].startswith("error:")
    assert rep["downstream"]["test_images"] == {"good": 2, "crack": 4, "first_test_id": 2}
    assert {"clean", "paper"} <= set(rep["downstream"])


# ---- evaluation ---------------------------------------------------------------------------------------------------
def _const(values, size=4):
    return torch.tensor(values, dtype=torch.float32)[:, None, None, None].expand(-1, 3, size, size).clone()


def test_ic_lpips_clustering_protocol_with_a_plugin_distance():
    from anomalens.generation.evaluate import ic_lpips

    def l1(a, b):
        return (a - b).abs().flatten(1).mean(1)

    real = _const([0.0, 1.0, 5.0])  # the third real image attracts nothing: its cluster counts 0
    gen = _const([0.0, 0.1, 0.9, 1.0, 0.95])
    expect = (0.1 + (0.1 + 0.05 + 0.05) / 3 + 0.0) / 3  # mean over ordered pairs == mean over unordered pairs
    assert ic_lpips(gen, real, l1) == pytest.approx(expect, abs=1e-6)
    assert ic_lpips(_const([0.0, 0.0, 1.0]), _const([0.0, 1.0]), l1) == pytest.approx(0.0)  # identical members
    assert ic_lpips(gen, real, l1, cap=1) == 0.0  # cap 1: every cluster has <= 1 member


def test_is_and_lpips_fail_clearly_without_weights(tmp_path, monkeypatch):
    """Needs torch-fidelity and lpips: the `test` extra installs them (through `generation`), so this test runs
    rather than skips in CI; their weights are never on this machine, which is what it checks."""
    from anomalens.generation import evaluate as E

    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path / "hub"))
    with pytest.raises(WeightsError, match=E.INCEPTION_FILE):
        E.inception_score(tmp_path)
    with pytest.raises(WeightsError, match=E.ALEXNET_FILE):
        E.lpips_distance()


def test_downstream_check_reports_clean_and_paper_protocols():
    from anomalens.generation.evaluate import downstream_check

    g = torch.Generator().manual_seed(0)
    normals = torch.rand(4, 3, 32, 32, generator=g) * 0.2
    gx = normals.clone()
    gm = torch.zeros(4, 1, 32, 32)
    gm[:, :, 8:20, 8:20] = 1
    gx = torch.where(gm.bool().expand_as(gx), torch.ones_like(gx), gx)
    tx = torch.cat([normals[:2], gx[:2]])
    tm = torch.cat([torch.zeros(2, 1, 32, 32), gm[:2]])
    res = downstream_check(gx, gm, normals, tx, tm, epochs=3, batch_size=4, lr=1e-2, progress=False)
    assert set(res) >= {"clean", "paper", "best_epoch"} and 1 <= res["best_epoch"] <= 3
    score = lambda r: r["image_auroc"] + r["pixel_auroc"] + r["pixel_ap"] + r["aupro"]  # noqa: E731
    assert score(res["paper"]) >= score(res["clean"])  # the paper's pick is the best on the test set by construction
    assert res["paper"]["pixel_auroc"] > 0.5


def test_checkpoint_survives_a_failed_swap(mvtec_root, tmp_path, monkeypatch):
    """Issue 25: a training checkpoint folder is swapped in; when the rename of the new one fails the previous
    checkpoint is put back whole (resume still works from it) and no temporary folder remains."""
    from conftest import fail_swap, tmp_debris

    kw = dict(config="tiny", device="cpu", progress=False, seed=5)
    G.train(mvtec_root, "widget", "crack", tmp_path / "b", steps=2, mask_steps=0, **kw)
    ckpt = tmp_path / "b" / "checkpoint"
    before = {p.name: p.read_bytes() for p in ckpt.iterdir()}
    assert json.loads(before["state.json"])["step_sae"] == 2
    fail_swap(monkeypatch, ckpt)
    with pytest.raises(OSError, match="injected"):
        G.train(mvtec_root, "widget", "crack", tmp_path / "b", steps=4, mask_steps=0, resume=True, device="cpu",
                progress=False)
    assert {p.name: p.read_bytes() for p in ckpt.iterdir()} == before and tmp_debris(tmp_path) == []
    monkeypatch.undo()
    G.train(mvtec_root, "widget", "crack", tmp_path / "b", steps=4, mask_steps=0, resume=True, device="cpu", progress=False)
    assert json.loads((ckpt / "state.json").read_text())["step_sae"] == 4
