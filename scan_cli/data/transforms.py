"""Transforms: a timm data config -> the eval transform and the training transforms.

Every transform first turns any PIL mode into RGB (`EnsureRGB`), so grayscale, RGBA and palette
images need no special case anywhere else. Imports timm/torchvision inside functions only.
"""

from __future__ import annotations

from ..errors import UsageError
from .images import to_rgb

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
DEFAULT_DATA_CONFIG = {
    "input_size": (3, 224, 224),
    "mean": IMAGENET_MEAN,
    "std": IMAGENET_STD,
    "interpolation": "bilinear",
    "crop_pct": 0.875,
    "crop_mode": "center",
}
TRAIN_TRANSFORMS = ("rrc", "pad_crop", "none")


def effective_data_config(data_config: dict | None, img_size: int | None = None) -> dict:
    """A full copy of a timm data config: missing keys filled from DEFAULT_DATA_CONFIG and
    `input_size` set to (3, img_size, img_size) when img_size is given."""
    cfg = dict(DEFAULT_DATA_CONFIG)
    cfg.update({k: v for k, v in (data_config or {}).items() if v is not None})
    size = cfg["input_size"]
    if isinstance(size, int):
        size = (3, size, size)
    size = tuple(int(s) for s in size)
    if len(size) == 2:
        size = (3,) + size
    if img_size is not None:
        if int(img_size) < 1:
            raise UsageError(f"image size must be a positive number of pixels, got {img_size}")
        size = (3, int(img_size), int(img_size))
    cfg["input_size"] = size
    cfg["mean"] = tuple(float(m) for m in cfg["mean"])
    cfg["std"] = tuple(float(s) for s in cfg["std"])
    if len(cfg["mean"]) == 1:
        cfg["mean"] = cfg["mean"] * 3
    if len(cfg["std"]) == 1:
        cfg["std"] = cfg["std"] * 3
    return cfg


class EnsureRGB:
    """Transform step: any PIL image -> RGB (a no-op for RGB images; tensors pass through)."""

    def __call__(self, img):
        return to_rgb(img) if hasattr(img, "mode") else img

    def __repr__(self) -> str:
        return "EnsureRGB()"


def _with_rgb(transform):
    steps = getattr(transform, "transforms", None)
    if isinstance(steps, list) and not (steps and isinstance(steps[0], EnsureRGB)):
        steps.insert(0, EnsureRGB())
    return transform


def _interp(name: str):
    from ..backbones.heavy import load_timm

    load_timm()
    from timm.data.transforms import str_to_interp_mode

    if name in (None, "random"):
        name = "bilinear"
    return str_to_interp_mode(name)


def eval_transform(data_config: dict | None, img_size: int | None = None):
    """Deterministic transform: (any PIL mode -> RGB,) resize the shorter side to H / crop_pct, center-crop to H x W,
    to tensor, normalize (timm's create_transform, is_training=False). crop_pct=1.0 means just
    resize (used for digits, where cropping 8x8 images makes no sense)."""
    from ..backbones.heavy import load_timm

    load_timm()
    from timm.data import create_transform

    cfg = effective_data_config(data_config, img_size)
    return _with_rgb(create_transform(
        input_size=cfg["input_size"],
        is_training=False,
        interpolation=cfg["interpolation"] if cfg["interpolation"] != "random" else "bilinear",
        mean=cfg["mean"],
        std=cfg["std"],
        crop_pct=cfg.get("crop_pct"),
        crop_mode=cfg.get("crop_mode") or "center",
    ))


# what timm's eval transform does with these (timm.data: DEFAULT_CROP_PCT, the crop modes we can describe)
TIMM_DEFAULT_CROP_PCT = 0.875
PIL_INTERPOLATIONS = ("nearest", "lanczos", "bilinear", "bicubic", "box", "hamming")


def eval_preprocessing(data_config: dict | None, img_size: int | None = None) -> dict | None:
    """``eval_transform`` as plain data (the export manifest's ``input.preprocessing``, the format of
    ``inference.export.describe_transform``), worked out from the data config the way timm's eval
    transform builds its steps, without importing timm or torchvision: RGB, resize (the shorter side
    to ``floor(H / crop_pct)``; ``squash``: both sides), center crop to H x W, /255, normalize.
    None where only timm's own transform can say (other crop modes, a non-square resize, an
    interpolation Pillow has no filter for). tests/test_preprocess.py checks it against
    ``describe_transform(eval_transform(...))``."""
    import math

    cfg = effective_data_config(data_config, img_size)
    _, h, w = cfg["input_size"]
    crop_pct = cfg.get("crop_pct") or TIMM_DEFAULT_CROP_PCT
    interpolation = cfg["interpolation"] if cfg["interpolation"] != "random" else "bilinear"
    mode = cfg.get("crop_mode") or "center"
    if interpolation not in PIL_INTERPOLATIONS:
        return None
    scale = (math.floor(h / crop_pct), math.floor(w / crop_pct))
    out: dict = {"color": "RGB"}
    if mode == "squash":
        out["resize"] = [scale[0], scale[1]]
    elif mode == "center" and scale[0] == scale[1]:
        out["resize_shorter_side"] = scale[0]
    else:
        return None
    import numpy as np

    out.update(interpolation=interpolation, center_crop=[h, w], divide_by=255,
               mean=[float(f"{float(np.float32(v)):.7g}") for v in cfg["mean"]],
               std=[float(f"{float(np.float32(v)):.7g}") for v in cfg["std"]])
    return out


def train_transform(data_config: dict | None, kind: str = "rrc", img_size: int | None = None, hflip: bool = True):
    """Training transform.

    rrc: random-resized-crop (scale 0.08..1) + horizontal flip, no colour jitter or auto-augment
    (timm create_transform, is_training=True). pad_crop: resize to H, random crop H with H//8
    zero padding + flip (the paper's CIFAR recipe). none: the eval transform.
    hflip=False leaves out the flip (digits are not mirror-symmetric).
    """
    cfg = effective_data_config(data_config, img_size)
    kind = (kind or "none").lower()
    if kind == "none":
        return eval_transform(cfg)
    _, h, w = cfg["input_size"]
    from ..backbones.heavy import load_timm

    load_timm()  # without torch._dynamo (timm imports torchvision too)
    if kind == "rrc":
        from timm.data import create_transform

        return _with_rgb(create_transform(
            input_size=cfg["input_size"],
            is_training=True,
            hflip=0.5 if hflip else 0.0,
            color_jitter=None,
            auto_augment=None,
            re_prob=0.0,
            interpolation=cfg["interpolation"] or "bilinear",
            mean=cfg["mean"],
            std=cfg["std"],
        ))
    if kind == "pad_crop":
        from torchvision import transforms as T

        steps = [
            EnsureRGB(),
            T.Resize((h, w), interpolation=_interp(cfg["interpolation"])),
            T.RandomCrop((h, w), padding=max(h, w) // 8),
        ]
        if hflip:
            steps.append(T.RandomHorizontalFlip())
        steps += [T.ToTensor(), T.Normalize(cfg["mean"], cfg["std"])]
        return T.Compose(steps)
    raise UsageError(f"unknown train transform '{kind}': use one of {', '.join(TRAIN_TRANSFORMS)}")


BATCHABLE_PIL_STEPS = ("EnsureRGB", "Resize", "CenterCrop")


def batch_preprocessing(transform):
    """Split an eval transform so that its tensor part can run once per batch.

    Returns (pil_steps, (H, W), mean, std) when `transform` is a Compose of deterministic PIL steps
    (EnsureRGB, Resize, CenterCrop) ending at a fixed size, then ToTensor/MaybeToTensor, then at
    most a Normalize: the batch's uint8 pixels x then give exactly the transform's tensors as
    (x / 255 - mean) / std in float32 (`file_batches.to_model_input`). None for anything else."""
    from ..backbones.heavy import load_torchvision

    load_torchvision()
    from torchvision import transforms as T

    steps = getattr(transform, "transforms", None)
    if not isinstance(steps, list):
        return None
    names = [type(s).__name__ for s in steps]
    at = next((i for i, n in enumerate(names) if n in ("ToTensor", "MaybeToTensor")), None)
    if at is None or any(n not in BATCHABLE_PIL_STEPS for n in names[:at]):
        return None
    tail = steps[at + 1:]
    if len(tail) > 1 or (tail and names[at + 1] != "Normalize"):
        return None
    size = None
    for step in steps[:at]:
        if type(step).__name__ == "CenterCrop":
            size = tuple(int(v) for v in step.size)
        elif type(step).__name__ == "Resize":
            s = step.size
            size = (int(s[0]), int(s[1])) if isinstance(s, (list, tuple)) and len(s) == 2 else None
    if size is None:
        return None
    mean, std = (tail[0].mean, tail[0].std) if tail else ((0.0, 0.0, 0.0), (1.0, 1.0, 1.0))
    return T.Compose(list(steps[:at])), size, mean, std
