"""CLIP-AD cost on CPU with random-init ViT-B-16-plus-240 (speed does not depend on the weights), each figure against
its baseline in the same run:

  * ms per image of SDP and SDP+ (`predict`, batch of --images) vs one plain open_clip `encode_image` forward of
    the same batch (target: SDP ≤ 1.3× that floor), and vs WinCLIP zero-shot (`predict`) on the same images;
  * per-class text set-up (418 sentences: encode with the context cut at the longest sentence + DBSCAN RVS) vs
    encoding the same sentences with stock `encode_text` at the full context of 77 (target ≥ 4× faster).

Timings are medians over --repeats interleaved runs (the machine is shared and noisy).

    python benchmarks/clipad.py [--images 4] [--repeats 3]
"""
from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time

import torch


def _timed(fn) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--images", type=int, default=4)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--winclip-images", type=int, default=2)
    args = ap.parse_args()
    import anomalens
    from anomalens.models.clipad import StageAdapters, save_adapters
    from anomalens.models.clipad.prompts import build_prompts
    from anomalens.progress import set_progress

    set_progress(False)
    threads = torch.get_num_threads()
    common = dict(class_name="bottle", weights=None, device="cpu", batch_size=args.images)
    sdp = anomalens.create("clipad", **common).setup()
    with tempfile.TemporaryDirectory() as tmp:
        ad = StageAdapters(sdp.width, sdp.embed_dim, 4)
        save_adapters(f"{tmp}/ad", ad, {"backbone": sdp.backbone})
        plus = anomalens.create("clipad", variant="sdp+", adapter=f"{tmp}/ad", **common)
        plus._clip, plus._tokenizer = sdp._clip, sdp._tokenizer  # one CLIP in memory
        plus.setup()

        # text: ours (cut context + RVS) vs stock encode_text at 77, the same 418 sentences
        clip, tok = sdp._model(), sdp._tokenizer
        sentences = sum(build_prompts("bottle"), [])
        tokens = tok(sentences)
        with torch.inference_mode():
            clip.encode_text(tokens[:8])  # warm-up
            full77 = _timed(lambda: clip.encode_text(tokens))
        text_ours = _timed(sdp._encode_rvs)
        cut = int(tokens.argmax(-1).max()) + 1

        x = torch.rand(args.images, 3, 240, 240, generator=torch.Generator().manual_seed(0))
        xn = torch.stack([sdp.transform.image(im) for im in x])
        sdp.text_features(), plus.text_features()
        with torch.inference_mode():
            clip.encode_image(xn)
        sdp.predict(x[:1]), plus.predict(x[:1])
        fwd, t_sdp, t_plus = [], [], []
        for _ in range(args.repeats):  # interleaved, so load changes hit all three alike
            with torch.inference_mode():
                fwd.append(_timed(lambda: clip.encode_image(xn)) / args.images)
            t_sdp.append(_timed(lambda: sdp.predict(x)) / args.images)
            t_plus.append(_timed(lambda: plus.predict(x)) / args.images)
    del plus
    win = anomalens.create("winclip", class_name="bottle", weights=None, device="cpu", batch_size=args.winclip_images).setup()
    win.text_prototypes()
    xw = x[: args.winclip_images]
    with torch.inference_mode():
        wclip = win._model()
        wfwd = _timed(lambda: wclip.encode_image(torch.stack([win.transform.image(im) for im in xw]))) / len(xw)
    t_win = _timed(lambda: win.predict(xw)) / len(xw)
    f, s, p = statistics.median(fwd), statistics.median(t_sdp), statistics.median(t_plus)
    out = {"threads": threads, "images": args.images, "repeats": args.repeats,
           "encode_image_ms": f * 1e3, "sdp_ms": s * 1e3, "sdp_plus_ms": p * 1e3,
           "sdp_vs_forward": s / f, "sdp_plus_vs_forward": p / f,
           "winclip_ms": t_win * 1e3, "winclip_forward_ms": wfwd * 1e3, "winclip_vs_forward": t_win / wfwd,
           "winclip_vs_sdp": (t_win / wfwd) / (s / f),
           "text_sentences": len(sentences), "text_context_cut": cut, "text_full77_s": full77, "text_setup_s": text_ours,
           "text_speedup": full77 / text_ours,
           "raw": {"encode_image_ms": [v * 1e3 for v in fwd], "sdp_ms": [v * 1e3 for v in t_sdp], "sdp_plus_ms": [v * 1e3 for v in t_plus]}}
    print(json.dumps(out, indent=2))
    print(f"CLIP-AD SDP {s * 1e3:.0f} ms/image = {s / f:.2f}x one encode_image forward ({f * 1e3:.0f} ms); "
          f"SDP+ {p * 1e3:.0f} ms = {p / f:.2f}x; WinCLIP zero-shot {t_win / wfwd:.1f}x its forward "
          f"({(t_win / wfwd) / (s / f):.1f}x SDP's cost); text set-up {text_ours:.1f} s vs {full77:.1f} s at context 77 "
          f"({full77 / text_ours:.1f}x faster; {len(sentences)} sentences cut at {cut} tokens)")


if __name__ == "__main__":
    main()
