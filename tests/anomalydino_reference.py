"""A slow reference port of the official AnomalyDINO scoring path (spec anomalydino.md §4.4), for differential tests.

Written from the spec and the official code's structure (github dammsi/AnomalyDINO b3435f0, file:line in comments),
one image per forward pass as the official code does, and independent of anomalens: the DINOv2 forward is a plain
torch.hub-style ViT written here from a hub state dict (its own positional interpolation, attention, LayerScale),
the mask uses scikit-learn's randomized PCA with a fixed seed, the search is faiss IndexFlatL2 on L2-normalised rows,
the map is a numpy bilinear (cv2.INTER_LINEAR, half-pixel centres) plus scipy's gaussian_filter.

Rotation uses cv2.warpAffine when OpenCV is importable; without it the package's fixed-point port of cv2 is used
(`ROTATION_SOURCE` says which), and that port is tested on its own against a float bilinear (and cv2 when present).
"""
from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F

MASKING_DEFAULT_MVTEC = {"capsule": True, "hazelnut": True, "pill": True, "screw": True, "toothbrush": True,
                         "bottle": False, "cable": False, "carpet": False, "grid": False, "leather": False,
                         "metal_nut": False, "tile": False, "transistor": False, "wood": False, "zipper": False}
ANGLES = [0, 45, 90, 135, 180, 225, 270, 315]  # utils.py:7

try:  # pragma: no cover - depends on the environment
    import cv2

    # the official runs (2024) used OpenCV 4.x; 5.x computes warpAffine with unquantised coordinates (up to 1 grey
    # level apart on real images), so only OpenCV <= 4.10 (checked bit-exact against the port) stands in for it
    if tuple(int(v) for v in cv2.__version__.split(".")[:2]) > (4, 10):
        raise ImportError(f"OpenCV {cv2.__version__} is newer than the official runs' 4.x")
    ROTATION_SOURCE = f"cv2 {cv2.__version__}"
except ImportError:  # pragma: no cover
    cv2 = None
    ROTATION_SOURCE = "anomalens fixed-point port of cv2.warpAffine (bit-exact against OpenCV 4.10)"


# --------------------------------------------------------------------------------------------- hub DINOv2
def hub_interpolate_pos_encoding(pos_embed: torch.Tensor, h_px: int, w_px: int, patch: int = 14) -> torch.Tensor:
    """dinov2 `interpolate_pos_encoding(x, w, h)` as called from `prepare_tokens_with_masks` (`B, nc, w, h = x.shape`:
    its "w" is the height). interpolate_offset 0.1, antialias False."""
    N = pos_embed.shape[1] - 1
    w0, h0 = h_px // patch, w_px // patch  # hub naming: w0 rows, h0 columns
    if w0 * h0 == N and h_px == w_px:
        return pos_embed
    M = int(math.sqrt(N))
    pe = pos_embed.float()
    cls_pe, patch_pe = pe[:, 0], pe[:, 1:]
    dim = pe.shape[-1]
    sx = float(w0 + 0.1) / M
    sy = float(h0 + 0.1) / M
    patch_pe = F.interpolate(patch_pe.reshape(1, M, M, dim).permute(0, 3, 1, 2), mode="bicubic", antialias=False,
                             scale_factor=(sx, sy))
    assert (w0, h0) == patch_pe.shape[-2:]
    patch_pe = patch_pe.permute(0, 2, 3, 1).view(1, -1, dim)
    return torch.cat((cls_pe.unsqueeze(0), patch_pe), dim=1)


def _layer_norm(x, sd, key):
    return F.layer_norm(x, (x.shape[-1],), sd[key + ".weight"], sd[key + ".bias"], eps=1e-6)


def hub_last_layer_patch_tokens(sd: dict, image: torch.Tensor, num_heads: int) -> torch.Tensor:
    """`model.get_intermediate_layers(x)[0].squeeze()` of a hub DINOv2 (no registers, MLP blocks): the last block's
    output through the final norm, class token dropped. image (1, 3, H, W) -> (h·w, D)."""
    _, _, H, W = image.shape
    x = F.conv2d(image, sd["patch_embed.proj.weight"], sd["patch_embed.proj.bias"], stride=14)
    x = x.flatten(2).transpose(1, 2)
    x = torch.cat((sd["cls_token"].expand(1, -1, -1), x), dim=1)
    x = x + hub_interpolate_pos_encoding(sd["pos_embed"], H, W)
    depth = 1 + max(int(k.split(".")[1]) for k in sd if k.startswith("blocks."))
    for i in range(depth):
        p = f"blocks.{i}."
        y = _layer_norm(x, sd, p + "norm1")
        B, Nt, C = y.shape
        qkv = F.linear(y, sd[p + "attn.qkv.weight"], sd[p + "attn.qkv.bias"]).reshape(B, Nt, 3, num_heads, C // num_heads)
        q, k, v = qkv.permute(2, 0, 3, 1, 4)
        attn = (q * (C // num_heads) ** -0.5) @ k.transpose(-2, -1)
        y = (attn.softmax(dim=-1) @ v).transpose(1, 2).reshape(B, Nt, C)
        y = F.linear(y, sd[p + "attn.proj.weight"], sd[p + "attn.proj.bias"])
        x = x + y * sd[p + "ls1.gamma"]
        y = _layer_norm(x, sd, p + "norm2")
        y = F.linear(F.gelu(F.linear(y, sd[p + "mlp.fc1.weight"], sd[p + "mlp.fc1.bias"])), sd[p + "mlp.fc2.weight"],
                     sd[p + "mlp.fc2.bias"])
        x = x + y * sd[p + "ls2.gamma"]
    return _layer_norm(x, sd, "norm")[0, 1:]


# --------------------------------------------------------------------------------------------- official steps
def prepare_image(img: np.ndarray, smaller_edge_size: int):
    """backbones.py:102-122: Resize(BICUBIC, antialias) on PIL, ToTensor, Normalize, crop to ×14."""
    from PIL import Image
    from torchvision import transforms

    transform = transforms.Compose([
        transforms.Resize(size=smaller_edge_size, interpolation=transforms.InterpolationMode.BICUBIC, antialias=True),
        transforms.ToTensor(),
        transforms.Normalize(mean=(0.485, 0.456, 0.406), std=(0.229, 0.224, 0.225)),
    ])
    t = transform(Image.fromarray(img))
    height, width = t.shape[1:]
    t = t[:, : height - height % 14, : width - width % 14]
    return t, (t.shape[1] // 14, t.shape[2] // 14)


def extract_features(sd: dict, image_tensor: torch.Tensor, num_heads: int) -> np.ndarray:
    """backbones.py:126-134: one image per forward, tokens to numpy."""
    with torch.inference_mode():
        x = image_tensor.unsqueeze(0).to(sd["cls_token"].device)
        return hub_last_layer_patch_tokens(sd, x, num_heads).cpu().numpy()


def rotate_image(image: np.ndarray, angle: float) -> np.ndarray:
    """utils.py:18-22."""
    if cv2 is not None:
        center = tuple(np.array(image.shape[1::-1]) / 2)
        rot = cv2.getRotationMatrix2D(center, angle, 1.0)
        return cv2.warpAffine(image, rot, image.shape[1::-1], flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_DEFAULT)
    from anomalens.models.anomalydino.torch_model import rotate_image as port

    return port(image, angle)


def _dilate_1d_column(m: np.ndarray) -> np.ndarray:
    """cv2.dilate of an (N, 1) uint8 column with a 3×3 ones kernel: a 3-tap max along N, border neutral."""
    out = m.copy()
    out[1:] = np.maximum(out[1:], m[:-1])
    out[:-1] = np.maximum(out[:-1], m[1:])
    return out


def _erode_1d_column(m: np.ndarray) -> np.ndarray:
    out = m.copy()
    out[1:] = np.minimum(out[1:], m[:-1])
    out[:-1] = np.minimum(out[:-1], m[1:])
    return out


def morphology_1d(mask: np.ndarray) -> np.ndarray:
    """backbones.py:170-171 on the (N, 1) column: dilate, then MORPH_CLOSE (dilate, erode); cv2 when importable."""
    col = mask.reshape(-1, 1).astype(np.uint8)
    if cv2 is not None:
        k = np.ones((3, 3), np.uint8)
        col = cv2.dilate(col, k)
        return cv2.morphologyEx(col, cv2.MORPH_CLOSE, k).astype(bool).reshape(mask.shape)
    col = _dilate_1d_column(col)
    col = _erode_1d_column(_dilate_1d_column(col))
    return col.astype(bool).reshape(mask.shape)


def compute_background_mask(img_features: np.ndarray, grid_size, threshold=10, masking_type=False, border=0.2,
                            random_state=0) -> np.ndarray:
    """backbones.py:159-174 (PCA seeded here: `random_state=None` upstream)."""
    from sklearn.decomposition import PCA

    pca = PCA(n_components=1, svd_solver="randomized", random_state=random_state)
    first_pc = pca.fit_transform(img_features.astype(np.float32))
    if masking_type:
        mask = first_pc > threshold
        m = mask.reshape(grid_size)[int(grid_size[0] * border):int(grid_size[0] * (1 - border)),
                                    int(grid_size[1] * border):int(grid_size[1] * (1 - border))]
        if m.sum() <= m.size * 0.35:
            mask = -first_pc > threshold
        mask = morphology_1d(mask)
    else:
        mask = np.ones_like(first_pc, dtype=bool)
    return mask.squeeze()


def mean_top1p(distances: np.ndarray) -> float:
    """post_eval.py:293-297."""
    if int(len(distances) * 0.01) == 0:
        return float(np.max(distances))
    return float(np.mean(sorted(distances.flatten(), reverse=True)[: int(len(distances) * 0.01)]))


def resize_linear(a: np.ndarray, out_h: int, out_w: int) -> np.ndarray:
    """cv2.resize(INTER_LINEAR) of a float (h, w) array: half-pixel centres, edge-clamped (upsampling)."""
    def axis(n_in, n_out):
        f = (np.arange(n_out) + 0.5) * (n_in / n_out) - 0.5
        f = np.clip(f, 0, None)
        i0 = np.minimum(np.floor(f).astype(int), n_in - 1)
        t = f - i0
        i1 = np.minimum(i0 + 1, n_in - 1)
        t = np.where(i0 == n_in - 1, 0.0, t)
        return i0, i1, t

    r0, r1, ty = axis(a.shape[0], out_h)
    c0, c1, tx = axis(a.shape[1], out_w)
    rows = a[r0] * (1 - ty)[:, None] + a[r1] * ty[:, None]
    return rows[:, c0] * (1 - tx)[None] + rows[:, c1] * tx[None]


def dists2map(dists: np.ndarray, img_shape) -> np.ndarray:
    """utils.py:25-30."""
    from scipy.ndimage import gaussian_filter

    return gaussian_filter(resize_linear(dists, img_shape[0], img_shape[1]), sigma=4)


# --------------------------------------------------------------------------------------------- the run
def reference_features(sd, refs, resolution=448, rotation=True, num_heads=6):
    """detection.py:80-104: the memory bank rows (not yet normalised), every view of every reference."""
    rows = []
    for image_ref in refs:
        views = [rotate_image(image_ref, a) for a in ANGLES] if rotation else [image_ref]
        for view in views:
            t, _ = prepare_image(view, resolution)
            rows.append(extract_features(sd, t, num_heads))
    return np.concatenate(rows, axis=0).astype("float32")


def test_features(sd, image, resolution=448, num_heads=6):
    """detection.py:146-148: features and grid of one test image."""
    t, grid = prepare_image(image, resolution)
    return extract_features(sd, t, num_heads), grid


def build_index(bank_rows: np.ndarray):
    """detection.py:104-118: faiss IndexFlatL2 over the L2-normalised bank (built once per category)."""
    import faiss

    bank = bank_rows.copy()
    index = faiss.IndexFlatL2(bank.shape[1])
    faiss.normalize_L2(bank)
    index.add(bank)
    return index


def score_test_image(bank_rows, features: np.ndarray, grid, image_shape, masking=False, threshold=10, random_state=0):
    """detection.py:150-189: (score, map at the image size, distance grid, mask); `bank_rows` = the raw bank rows or
    an index from `build_index`."""
    import faiss

    index = build_index(bank_rows) if isinstance(bank_rows, np.ndarray) else bank_rows
    if masking:
        mask2 = compute_background_mask(features, grid, threshold=threshold, masking_type=masking, random_state=random_state)
    else:
        mask2 = np.ones(features.shape[0], dtype=bool)
    f = np.ascontiguousarray(features[mask2]).astype(np.float32)
    faiss.normalize_L2(f)
    distances, _ = index.search(f, k=1)
    distances = distances / 2
    output_distances = np.zeros_like(mask2, dtype=float)
    output_distances[mask2] = distances.squeeze()
    d_masked = output_distances.reshape(grid)
    return mean_top1p(output_distances.flatten()), dists2map(d_masked, image_shape), d_masked, mask2
