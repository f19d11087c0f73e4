"""Sentences per second of EVF-SAM with the image-embedding cache vs without, side by side.

    python benchmarks/bench_embedding_cache.py [--family sam|sam2] [--images 12] [--repeats 5]

cached + batched: ``model.predict(image, group)``: the SAM image embedding and BEiT-3's image
    preprocessing once per image, every expression of the image in one padded BEiT-3 batch.
per expression:   for every expression, ``embed_image`` + ``segment`` of that text alone (what a
    loop over samples without grouping by image does).

Workload: testA-shaped, 2.9 expressions per image (groups of 3,3,3,3,3,3,3,3,3,2), COCO-sized
images (480x640 and 640x480). Model: a randomly initialised *benchmark-size* EVF-SAM (the real
code, small sizes) whose SAM image encoder takes most of the time per image, as in the real
model: SAM ViT-H at 1024 px costs ~5.5 TFLOPs per image, BEiT-3 large over ~210 tokens
~0.13 TFLOPs per expression and the mask decoder a few GFLOPs, so the image encoder is ~95% of
one image + one expression. The printed "image share" is the same quantity measured here.
The cache alone then gives about k (1 + e) / (1 + k e) with k = 2.9 expressions per image and
e = per-expression / per-image cost; batching the expressions adds to that.

The two paths alternate within every repeat (which one goes first alternates too) and the
median of the repeats is reported. Nothing is asserted: the machine is shared and noisy.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
from model_fixtures import make_group, random_image, train_spm  # noqa: E402

from evfbench.models.evf_sam import EvfSam, evf_sam, evf_sam2  # noqa: E402
from evfbench.models.beit3 import BEIT3_CONFIGS  # noqa: E402
from evfbench.models.sam_backends import SAM2_CONFIGS  # noqa: E402

EXPRESSIONS = [
    "man in the red shirt on the left", "the woman holding an umbrella", "right most zebra", "closest chair",
    "kid wearing glasses", "white car behind the bus", "left elephant", "person in the middle",
    "bottom right corner plate with food", "tall guy", "blue umbrella", "small dog under the table",
]
GROUP_SIZES = [3, 3, 3, 3, 3, 3, 3, 3, 3, 2]  # mean 2.9

# SAM-1 benchmark size: ViT width 256, 6 blocks, 512 px (32 x 32 tokens); a 64-d decoder and a
# BEiT-3 of width 128 / 4 layers / 112 px, so that image : expression costs resemble the real model's.
SAM_BENCH = dict(
    encoder_embed_dim=256, encoder_depth=6, encoder_num_heads=4, encoder_global_attn_indexes=[5], img_size=512,
    window_size=8, prompt_embed_dim=64, mask_in_chans=16, decoder_mlp_dim=256, decoder_num_heads=4, iou_head_hidden_dim=64,
)
BEIT_BENCH = dict(BEIT3_CONFIGS["test"].to_dict(), embed_dim=128, layers=4, heads=4, ffn_dim=512, img_size=112)
# SAM-2 benchmark size: the test architecture at 512 px with a wider trunk.
SAM2_BENCH = {
    "config_file": SAM2_CONFIGS["test"].config_file,
    "overrides": {
        **dict(SAM2_CONFIGS["test"].to_dict()["overrides"]),
        "image_size": 512,
        "image_encoder.trunk.embed_dim": 48,
        "image_encoder.trunk.num_heads": 1,
        "image_encoder.trunk.stages": [1, 2, 4, 1],
        "image_encoder.trunk.global_att_blocks": [5],
        "image_encoder.trunk.window_spec": [8, 4, 8, 4],
        "image_encoder.neck.backbone_channel_list": [384, 192, 96, 48],
        "memory_attention.layer.self_attention.feat_sizes": [32, 32],
        "memory_attention.layer.cross_attention.feat_sizes": [32, 32],
    },
}


def workload(n_images: int) -> list[tuple[np.ndarray, object]]:
    out = []
    for i in range(n_images):
        h, w = (480, 640) if i % 2 == 0 else (640, 480)
        k = GROUP_SIZES[i % len(GROUP_SIZES)]
        texts = [EXPRESSIONS[(i * 3 + j) % len(EXPRESSIONS)] for j in range(k)]
        out.append((random_image(h, w, seed=i), make_group(texts, h, w, image_id=i + 1)))
    return out


def cached(model: EvfSam, work) -> list[np.ndarray]:
    return [model.predict(image, group) for image, group in work]


def per_expression(model: EvfSam, work) -> list[np.ndarray]:
    out = []
    for image, group in work:
        masks = []
        for text in group.texts:
            embedding = model.embed_image(image)  # the image is encoded again for every text
            masks.append((model.segment(embedding, [text], (group.height, group.width)) > 0).numpy()[0])
        out.append(np.stack(masks))
    return out


def image_share(model: EvfSam, work, repeats: int = 3) -> float:
    """Share of the image encoding in one image + one expression (medians over the workload)."""
    image, group = work[0]
    t_img, t_txt = [], []
    for _ in range(repeats):
        t0 = time.perf_counter()
        embedding = model.embed_image(image)
        t1 = time.perf_counter()
        model.segment(embedding, group.texts[:1], (group.height, group.width))
        t2 = time.perf_counter()
        t_img.append(t1 - t0)
        t_txt.append(t2 - t1)
    img, txt = statistics.median(t_img), statistics.median(t_txt)
    return img / (img + txt)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--family", choices=["sam", "sam2"], default="sam")
    parser.add_argument("--images", type=int, default=10)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)

    spm = train_spm(Path(tempfile.mkdtemp(prefix="evf_bench_spm_")))
    build = evf_sam if args.family == "sam" else evf_sam2
    sam_config = SAM_BENCH if args.family == "sam" else SAM2_BENCH
    model = build(beit3_config=BEIT_BENCH, sam_config=sam_config, tokenizer=str(spm))
    work = workload(args.images)
    n_sentences = sum(len(g.samples) for _, g in work)

    cached(model, work[:1]), per_expression(model, work[:1])  # warm-up
    share = image_share(model, work)
    times = {"cached+batched": [], "per-expression": []}
    same = total = 0
    for r in range(args.repeats):
        order = ["cached+batched", "per-expression"] if r % 2 == 0 else ["per-expression", "cached+batched"]
        results = {}
        for name in order:
            t0 = time.perf_counter()
            results[name] = (cached if name == "cached+batched" else per_expression)(model, work)
            times[name].append(time.perf_counter() - t0)
        for a, b in zip(results["cached+batched"], results["per-expression"]):
            same, total = same + int((a == b).sum()), total + a.size

    info = model.describe()
    print(f"model: {info['architecture']}, {info['parameters'] / 1e6:.2f}M parameters (benchmark size, random weights), "
          f"{args.threads} thread(s), torch {torch.__version__}")
    print(f"workload: {len(work)} images, {n_sentences} expressions ({n_sentences / len(work):.2f} per image), "
          f"{args.repeats} interleaved repeats, median")
    k, e = n_sentences / len(work), (1 - share) / share
    print(f"image share of one image + one expression: {share:.1%}; "
          f"ratio from the cache alone (no batching gain) ~ {k * (1 + e) / (1 + k * e):.2f}x")
    medians = {k: statistics.median(v) for k, v in times.items()}
    for name, t in medians.items():
        print(f"  {name:15s} {n_sentences / t:8.1f} sentences/s   (median {t:.3f} s, runs {', '.join(f'{x:.3f}' for x in times[name])})")
    print(f"ratio cached+batched / per-expression: {medians['per-expression'] / medians['cached+batched']:.2f}x  (goal >= 2.5x)")
    print(f"mask pixels equal on both paths: {same / total:.5%} (random weights: logits near 0 may flip "
          "between a padded batch and a single text)")


if __name__ == "__main__":
    main()
