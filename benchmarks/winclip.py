"""WinCLIP cost on CPU with random-init weights, each figure against its baseline in the same run.

  * ms per image of the full zero-shot method vs one open_clip `encode_image` forward (the arithmetic floor is
    ≈12.4 forwards: 1 + 196 + 169 windows of 5 / 10 tokens vs 226 tokens);
  * per-class text set-up (242 prompts) vs anomalib 2.7's WinClipModel.setup (when anomalib is importable by
    --anomalib-python; its CLIP is built with random weights the same way).

    python benchmarks/winclip.py [--anomalib-python /path/to/python]
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time

import torch

ANOMALIB_SNIPPET = r"""
import time, json, open_clip, torch
real = open_clip.create_model_and_transforms
open_clip.create_model_and_transforms = lambda name, pretrained=None, **k: real(name, pretrained=None, **k)
from anomalib.models.image.winclip.torch_model import WinClipModel
torch.set_num_threads(%d)
m = WinClipModel(class_name=None)
t0 = time.perf_counter(); m.setup("metal_nut"); t = time.perf_counter() - t0
print(json.dumps({"text_setup_s": t}))
"""


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--anomalib-python", default="")
    ap.add_argument("--images", type=int, default=4)
    args = ap.parse_args()
    import anomalens
    from anomalens.progress import set_progress

    set_progress(False)
    threads = torch.get_num_threads()
    model = anomalens.create("winclip", class_name="metal_nut", weights=None, device="cpu", batch_size=args.images)
    model.setup()  # build CLIP first: anomalib's figure times setup() after its constructor built CLIP too
    t0 = time.perf_counter()
    model.text_prototypes()
    text_s = time.perf_counter() - t0
    x = torch.rand(args.images, 3, 240, 240, generator=torch.Generator().manual_seed(0))
    clip = model._model()
    with torch.inference_mode():
        clip.encode_image(x)
        t0 = time.perf_counter()
        clip.encode_image(x)
        fwd = (time.perf_counter() - t0) / args.images
    model.predict(x[:1])
    t0 = time.perf_counter()
    model.predict(x)
    ours = (time.perf_counter() - t0) / args.images
    out = {"threads": threads, "encode_image_ms": fwd * 1e3, "winclip_ms": ours * 1e3, "ratio_vs_forward": ours / fwd,
           "text_setup_s": text_s}
    if args.anomalib_python:
        r = subprocess.run([args.anomalib_python, "-c", ANOMALIB_SNIPPET % threads], capture_output=True, text=True)
        try:
            out["anomalib_text_setup_s"] = json.loads(r.stdout.strip().splitlines()[-1])["text_setup_s"]
            out["text_setup_speedup"] = out["anomalib_text_setup_s"] / text_s
        except (IndexError, ValueError, KeyError):
            print("anomalib run failed:", r.stderr[-500:], file=sys.stderr)
    print(json.dumps(out, indent=2))
    print(f"WinCLIP zero-shot: {ours * 1e3:.0f} ms/image = {ours / fwd:.1f}x one encode_image forward ({fwd * 1e3:.0f} ms); "
          f"text set-up {text_s:.2f} s" + (f" vs anomalib {out['anomalib_text_setup_s']:.2f} s ({out['text_setup_speedup']:.1f}x faster)"
                                            if "text_setup_speedup" in out else ""))


if __name__ == "__main__":
    main()
