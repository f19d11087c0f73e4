"""Linear probe of a SAM image embedding: what a frozen encoder holds about each object.

    python -m evfbench.probe --run runs/shapes_sam_boxes --data-root DATA
    python -m evfbench.probe --model evf_sam_tiny.shapes --by size --output probe.json

A text stage with a frozen SAM encoder can only read what the embedding holds, so the probe
asks it directly (TRAINING.md of ``evf_sam_tiny.shapes`` reports it after every stage 1). Each
object is the mean of the embedding over its mask at the embedding's grid; a multinomial
logistic regression (L-BFGS, a small L2 penalty), fitted on the objects of the first
``--train-limit`` train images, predicts an attribute of the objects of the first
``--val-limit`` val images. ``category`` is the object's category; any other name is an
``attributes`` field of ``instances.json`` (``shapes`` records ``color`` and ``size``) or a
derived one (``hidden``: how much of a shape others cover).
"""

from __future__ import annotations

import argparse
import sys
from collections import defaultdict
from pathlib import Path
from typing import Any, Sequence

import torch
import torch.nn.functional as F
import yaml
from tqdm import tqdm

from evfbench.data import load_split
from evfbench.data.types import Annotation, ImageGroup
from evfbench.errors import EvfbenchError, cli
from evfbench.io import atomic_write_json
from evfbench.registry import create_model, get_split
from evfbench.train import SAM_FILE
from evfbench.train_data import attribute_value

MAX_CLASSES = 100  # more values than this is a measurement (e.g. an area), not a class


class ProbeError(EvfbenchError):
    """A probe that cannot run as asked; the message says what to do."""


def attribute(ann: Annotation, name: str, where: str) -> Any:
    """``category`` -> the category id; any other name -> that ``attributes`` field, or the
    derived attribute of that name (``hidden``: :data:`evfbench.train_data.DERIVED_ATTRIBUTES`)."""
    if name == "category":
        return ann.category_id
    try:
        value = attribute_value(ann, name)
    except KeyError:
        raise ProbeError(f"{where}: annotation {ann.ann_id} has no attribute {name!r} (it records "
                         f"{sorted(ann.attributes) or 'none'})\n  fix: probe category or one of those") from None
    if not isinstance(value, (str, int)) or isinstance(value, bool):
        raise ProbeError(f"{where}: annotation {ann.ann_id} has {name} = {value!r}, a measurement, not a class; the "
                         "probe predicts classes\n  fix: probe a class attribute (shapes: category, color, size, hidden)")
    return value


def object_features(net: Any, groups: Sequence[ImageGroup], device: torch.device, progress: bool = True,
                    desc: str = "probe") -> tuple[torch.Tensor, list[Annotation]]:
    """``(N, C)`` mean SAM embedding over each object's mask, and the N objects (an object
    that covers no embedding cell is left out)."""
    if net.config.family != "sam":
        raise ProbeError(f"the probe reads a SAM-1 embedding (one feature map); this model's SAM is {net.config.family!r}")
    rows, objects = [], []
    with torch.no_grad():
        for group in tqdm(groups, desc=desc, unit="img", disable=not progress):
            embed = net.backend.encode(net.visual_model, group.load_image(), device).image_embed[0].float()
            grid = embed.shape[-1]
            scale = grid / max(group.height, group.width)  # SAM resizes the longest side, pads the rest
            for ann in group.annotations.values():
                mask = torch.from_numpy(ann.mask(group.height, group.width)).float()[None, None]
                cover = F.interpolate(mask, scale_factor=scale, mode="area")[0, 0]
                weight = torch.zeros(embed.shape[-2:])
                weight[: cover.shape[0], : cover.shape[1]] = cover[:grid, :grid]
                if weight.sum() > 1e-3:
                    rows.append((embed * weight.to(embed.device)).sum((1, 2)).cpu() / weight.sum())
                    objects.append(ann)
    if not rows:
        raise ProbeError("no object covers an embedding cell: the split has no annotated objects")
    return torch.stack(rows), objects


def fit_probe(x_train: torch.Tensor, y_train: torch.Tensor, x_val: torch.Tensor, y_val: torch.Tensor,
              classes: int, l2: float = 1e-3) -> torch.Tensor:
    """Fit a logistic regression on standardised features; -> ``(N_val,)`` bool, right or wrong
    (a val label of -1, a value the train objects never have, is always wrong)."""
    mean, std = x_train.mean(0), x_train.std(0) + 1e-6
    x_train, x_val = (x_train - mean) / std, (x_val - mean) / std
    torch.manual_seed(0)
    linear = torch.nn.Linear(x_train.shape[1], classes)
    opt = torch.optim.LBFGS(linear.parameters(), max_iter=200)

    def closure() -> torch.Tensor:
        opt.zero_grad()
        loss = F.cross_entropy(linear(x_train), y_train) + l2 * linear.weight.pow(2).sum()
        loss.backward()
        return loss

    with torch.enable_grad():
        opt.step(closure)
    with torch.no_grad():
        return linear(x_val).argmax(1) == y_val


def probe(model: Any, data_root: Path | None, attributes: Sequence[str] = ("category", "color", "size"),
          by: str | None = None, train_split: str = "shapes_train", val_split: str = "shapes_val",
          train_limit: int = 600, val_limit: int = 200, progress: bool = True) -> dict[str, Any]:
    """Accuracy (%) of a linear probe per attribute, and with ``by`` per value of that attribute;
    the numbers of train and val objects."""
    net, device = model.net, getattr(model, "device", torch.device("cpu"))
    train_groups = load_split(get_split(train_split), data_root)[:train_limit]
    val_groups = load_split(get_split(val_split), data_root)[:val_limit]
    x_train, train_objects = object_features(net, train_groups, device, progress, f"probe {train_split}")
    x_val, val_objects = object_features(net, val_groups, device, progress, f"probe {val_split}")
    out: dict[str, Any] = {"train_objects": len(train_objects), "val_objects": len(val_objects), "accuracy": {}}
    groups = [attribute(a, by, val_split) for a in val_objects] if by else []
    for name in attributes:
        train_labels = [attribute(a, name, train_split) for a in train_objects]
        values = sorted(set(train_labels), key=str)
        if len(values) > MAX_CLASSES:
            raise ProbeError(f"{name} takes {len(values)} values on the {train_split} objects, more than a class "
                             f"attribute ({MAX_CLASSES})\n  fix: probe a class attribute (shapes: category, color, size, hidden)")
        index = {v: i for i, v in enumerate(values)}
        y_train = torch.tensor([index[label] for label in train_labels])
        y_val = torch.tensor([index.get(attribute(a, name, val_split), -1) for a in val_objects])
        right = fit_probe(x_train, y_train, x_val, y_val, len(values))
        out["accuracy"][name] = round(100 * right.float().mean().item(), 1)
        if by:
            per: dict[str, list[bool]] = defaultdict(list)
            for value, ok in zip(groups, right.tolist()):
                per[str(value)].append(ok)
            out.setdefault(f"accuracy_by_{by}", {})[name] = {v: round(100 * sum(r) / len(r), 1) for v, r in sorted(per.items())}
    return out


def load_probed_model(model: str | None, model_args: dict[str, Any], run: Path | None, device: str) -> Any:
    """``--run`` (a training run folder: a stage-1 ``model/sam.safetensors`` with the run's
    ``config.yaml``, or a text stage's ``model/``) or ``--model`` with its arguments."""
    if (model is None) == (run is None):
        raise ProbeError("give exactly one of --model (a registered model) and --run (a training run folder)")
    if run is None:
        return create_model(model, device=device, **model_args)
    config = run / "config.yaml"
    if not config.is_file():
        raise ProbeError(f"{config} does not exist\n  fix: --run takes a folder written by python -m evfbench.train")
    cfg = yaml.safe_load(config.read_text(encoding="utf-8")) or {}
    args = {**(cfg.get("model_args") or {}), **model_args}
    if (run / "model" / SAM_FILE).is_file():
        args["sam_checkpoint"] = str(run / "model" / SAM_FILE)
    elif (run / "model" / "config.json").is_file():
        args["weights"] = str(run / "model")
    else:
        raise ProbeError(f"{run / 'model'} holds neither {SAM_FILE} nor config.json\n  fix: probe a finished run "
                         "(its model/ is written at the end)")
    return create_model(cfg.get("model", "evf_sam_tiny"), device=device, **args)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m evfbench.probe", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default=None, help="a registered model, e.g. evf_sam_tiny.shapes")
    p.add_argument("--model-args", default=None, help="builder arguments k=v,k2=v2 (e.g. weights=DIR)")
    p.add_argument("--run", type=Path, default=None, help="a python -m evfbench.train output folder instead of --model")
    p.add_argument("--attributes", default="category,color,size", help="what to probe (default: category,color,size)")
    p.add_argument("--by", default=None, help="also report each accuracy per value of this attribute, e.g. size")
    p.add_argument("--data-root", type=Path, default=None, help="datasets root (default: $EVFBENCH_DATA)")
    p.add_argument("--train-split", default="shapes_train")
    p.add_argument("--val-split", default="shapes_val")
    p.add_argument("--train-limit", type=int, default=600, help="images of the train split to fit on")
    p.add_argument("--val-limit", type=int, default=200, help="images of the val split to score")
    p.add_argument("--device", default="cpu")
    p.add_argument("--output", type=Path, default=None, help="also write the result as JSON here")
    return p


@cli
def main(argv: list[str] | None = None) -> int:
    from evfbench.run import parse_model_args

    args = build_parser().parse_args(argv)
    model = load_probed_model(args.model, parse_model_args(args.model_args), args.run, args.device)
    result = probe(model, args.data_root, [a for a in args.attributes.split(",") if a], args.by, args.train_split,
                   args.val_split, args.train_limit, args.val_limit)
    print(f"objects: {result['train_objects']} train, {result['val_objects']} val")
    for name, acc in result["accuracy"].items():
        per = result.get(f"accuracy_by_{args.by}", {}).get(name, {})
        print(f"{name:>10} {acc:5.1f} %" + "".join(f"  {v}: {a:.1f}" for v, a in per.items()))
    if args.output is not None:
        atomic_write_json(args.output, result)
    return 0


if __name__ == "__main__":
    sys.exit(main())
