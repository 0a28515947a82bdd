"""CLIP-AD cost on CPU with random-init ViT-B-16-plus-240 (speed does not depend on the weights), each figure against
its baseline in the same run:

  * ms per image of SDP and SDP+ (`predict`, batch of --images) vs one plain open_clip `encode_image` forward of
    the same batch (target: SDP ≤ 1.3× that floor), and vs WinCLIP zero-shot (`predict`) on the same images;
  * per-class text set-up (418 sentences: encode with the context cut at the longest sentence + DBSCAN RVS) vs
    encoding the same sentences with stock `encode_text` at the full context of 77 (target ≥ 4× faster).

Image timings are medians over --repeats interleaved runs; text timings interleave the two prompt groups
(normal, abnormal: full context then cut, cut then full context). Ratios use process CPU time (robust to other
processes on a shared machine); wall-clock figures are printed too.

    python benchmarks/clipad.py [--images 4] [--repeats 3]
"""
from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time

import torch


def _both(fn) -> tuple[float, float]:
    """(cpu seconds, wall seconds) of one call."""
    c0, w0 = time.process_time(), time.perf_counter()
    fn()
    return time.process_time() - c0, time.perf_counter() - w0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--images", type=int, default=4)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--winclip-images", type=int, default=2)
    ap.add_argument("--backbone", default="ViT-B-16-plus-240", help="open_clip model (random init; smoke runs: ViT-S-16)")
    args = ap.parse_args()
    import anomalens
    from anomalens.models.clipad import StageAdapters, save_adapters
    from anomalens.models.clipad.prompts import build_prompts
    from anomalens.progress import set_progress

    set_progress(False)
    threads = torch.get_num_threads()
    common = dict(class_name="bottle", backbone=args.backbone, weights=None, device="cpu", batch_size=args.images)
    sdp = anomalens.create("clipad", **common).setup()
    with tempfile.TemporaryDirectory() as tmp:
        ad = StageAdapters(sdp.width, sdp.embed_dim, 4)
        save_adapters(f"{tmp}/ad", ad, {"backbone": sdp.backbone})
        plus = anomalens.create("clipad", variant="sdp+", adapter=f"{tmp}/ad", **common)
        plus._clip, plus._tokenizer = sdp._clip, sdp._tokenizer  # one CLIP in memory
        plus.setup()

        # text: ours (each group encoded with the context cut at its longest sentence, as the set-up does, + RVS)
        # vs stock encode_text at 77 on the same sentences; the two groups interleave the two orders
        from anomalens.backbones import encode_text_truncated
        from anomalens.models.clipad.torch_model import representative_vector

        clip, tok = sdp._model(), sdp._tokenizer
        groups = [tok(g) for g in build_prompts("bottle")]
        sentences = sum(build_prompts("bottle"), [])
        full77 = [0.0, 0.0]
        ours = [0.0, 0.0]
        embeds = []
        with torch.inference_mode():
            clip.encode_text(groups[0][:8]), encode_text_truncated(clip, groups[0][:8])  # warm-up
            for i, g in enumerate(groups):
                order = ("full", "cut") if i == 0 else ("cut", "full")
                for kind in order:
                    if kind == "full":
                        c, w = _both(lambda: clip.encode_text(g))
                        full77 = [full77[0] + c, full77[1] + w]
                    else:
                        res = {}
                        c, w = _both(lambda: res.setdefault("e", encode_text_truncated(clip, g)))
                        ours = [ours[0] + c, ours[1] + w]
                        embeds.append(torch.nn.functional.normalize(res["e"].float(), dim=-1).numpy())
        import sklearn.cluster  # noqa: F401  (a one-time import, not text set-up)

        eps, mins = sdp.dbscan_params
        c, w = _both(lambda: [representative_vector(e, "dbscan", eps, mins) for e in embeds])
        ours = [ours[0] + c, ours[1] + w]
        cut = max(int(g.argmax(-1).max()) + 1 for g in groups)

        x = torch.rand(args.images, 3, 240, 240, generator=torch.Generator().manual_seed(0))
        xn = torch.stack([sdp.transform.image(im) for im in x])
        sdp.text_features(), plus.text_features()
        with torch.inference_mode():
            clip.encode_image(xn)
        sdp.predict(x[:1]), plus.predict(x[:1])
        runs = {"forward": [], "sdp": [], "sdp+": []}  # (cpu, wall) seconds per image
        n = args.images
        for _ in range(args.repeats):  # interleaved, so load changes hit all three alike
            with torch.inference_mode():
                runs["forward"].append([v / n for v in _both(lambda: clip.encode_image(xn))])
            runs["sdp"].append([v / n for v in _both(lambda: sdp.predict(x))])
            runs["sdp+"].append([v / n for v in _both(lambda: plus.predict(x))])
    del plus
    win = anomalens.create("winclip", class_name="bottle", backbone=args.backbone, weights=None, device="cpu", batch_size=args.winclip_images).setup()
    win.text_prototypes()
    xw = x[: args.winclip_images]
    with torch.inference_mode():
        wclip = win._model()
        xwn = torch.stack([win.transform.image(im) for im in xw])
        wclip.encode_image(xwn)
        wfwd = [v / len(xw) for v in _both(lambda: wclip.encode_image(xwn))]
    t_win = [v / len(xw) for v in _both(lambda: win.predict(xw))]
    text_ours, text_full = ours[0], full77[0]
    med = {k: [statistics.median(r[i] for r in v) for i in (0, 1)] for k, v in runs.items()}  # [cpu, wall]
    f, s, p = med["forward"][0], med["sdp"][0], med["sdp+"][0]
    out = {"threads": threads, "images": args.images, "repeats": args.repeats,
           "encode_image_ms_wall": med["forward"][1] * 1e3, "sdp_ms_wall": med["sdp"][1] * 1e3, "sdp_plus_ms_wall": med["sdp+"][1] * 1e3,
           "sdp_vs_forward": s / f, "sdp_plus_vs_forward": p / f,
           "sdp_vs_forward_wall": med["sdp"][1] / med["forward"][1], "sdp_plus_vs_forward_wall": med["sdp+"][1] / med["forward"][1],
           "winclip_ms_wall": t_win[1] * 1e3, "winclip_vs_forward": t_win[0] / wfwd[0], "winclip_vs_forward_wall": t_win[1] / wfwd[1],
           "winclip_vs_sdp": (t_win[0] / wfwd[0]) / (s / f),
           "text_sentences": len(sentences), "text_context_cut": cut, "text_full77_cpu_s": text_full, "text_setup_cpu_s": text_ours,
           "text_full77_wall_s": full77[1], "text_setup_wall_s": ours[1], "text_speedup": text_full / text_ours,
           "text_speedup_wall": full77[1] / ours[1],
           "raw_cpu_s_per_image": {k: [r[0] for r in v] for k, v in runs.items()},
           "raw_wall_s_per_image": {k: [r[1] for r in v] for k, v in runs.items()}}
    print(json.dumps(out, indent=2))
    print(f"CLIP-AD SDP {med['sdp'][1] * 1e3:.0f} ms/image wall = {s / f:.2f}x one encode_image forward in CPU time "
          f"({med['sdp'][1] / med['forward'][1]:.2f}x wall; forward {med['forward'][1] * 1e3:.0f} ms); SDP+ {p / f:.2f}x "
          f"({med['sdp+'][1] / med['forward'][1]:.2f}x wall); WinCLIP zero-shot {t_win[0] / wfwd[0]:.1f}x its forward "
          f"({(t_win[0] / wfwd[0]) / (s / f):.1f}x SDP's cost); text set-up {text_ours:.1f} s vs {text_full:.1f} s at context 77 "
          f"({text_full / text_ours:.1f}x faster in CPU time, {full77[1] / ours[1]:.1f}x wall; {len(sentences)} sentences cut at "
          f"{cut} tokens); CPU seconds (2 threads count twice)")


if __name__ == "__main__":
    main()
