"""Recipes: named training settings. Precedence: built-in defaults < recipe file < command-line flags.

Recipes are TOML files shipped inside the package (`recipes/` in the repo, `scan_cli.builtin_recipes` when
installed) and addressable by name, or any .toml path.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Optional

from ..errors import ScanError, UsageError

# the exit-head presets (model.HeadConfig.PRESETS builds them; named here so flags are checked without torch)
HEAD_PRESETS = ("slim", "paper")


# What the exits learn from (see ``scan_cli.training.scan_loss``). ``paper`` is the official code's
# loss, kept for reproduction. ``scan`` (the default) distils 5x more gently: with lambda = 0.5 each
# shallow exit's KD term weighs lambda T^2 = 4.5 against 1.0 for the deepest exit's own CE, and on
# small data, where the deepest exit is the weakest teacher, that dragged every exit (the deepest
# one too, through the shared stages) below plain training; lambda = 0.1 keeps KD and loses
# nothing (bench/results/quality.md).
LOSS_PRESETS = {
    "paper": dict(kd_lambda=0.5, temperature=3.0, hint_weight=0.03, kd_ramp=0.0, exit_weight=1.0, exit_grad=1.0,
                  kd_teacher="last", last_weight=1.0),
    "scan": dict(kd_lambda=0.1, temperature=3.0, hint_weight=0.03, kd_ramp=0.0, exit_weight=1.0, exit_grad=1.0,
                 kd_teacher="last", last_weight=1.0),
}
SMALL_IMAGE = 64  # px: at or below, CIFAR-style training (pad-and-crop, weight decay 5e-4)
NO_FLIP_DATA = ("digits", "mnist")  # hand-written digits are not mirror-symmetric


@dataclass
class Recipe:
    """Training settings. ``None`` (and ``"auto"``) mean "chosen by ``resolve`` from the backbone,
    image size, data and batch size"; ``fit`` resolves before training and saves the result."""

    description: str = ""
    backbone: Optional[str] = None  # default backbone when none is named on the command line
    data: Optional[str] = None  # None = the digits set
    image_column: Optional[str] = None  # datasets sources: None = detected (by feature type, then name)
    label_column: Optional[str] = None
    streaming: bool = False  # stream the data (Hub ids, parquet/arrow) instead of loading it whole
    img_size: Optional[int] = None  # None = the backbone's data config
    epochs: int = 10
    batch_size: int = 64  # per process
    optimizer: str = "sgd"  # sgd | adamw
    lr: Optional[float] = None  # None = scaled to the global batch size (base_lr_per_256 x batch / 256)
    momentum: float = 0.9
    weight_decay: Optional[float] = None  # None = 5e-4 for small images (<= 64 px), 1e-4 above
    schedule: str = "cosine"  # cosine (after the warm-up) | multistep | constant
    milestones: list = field(default_factory=list)  # epochs where multistep multiplies lr by gamma
    gamma: float = 0.1
    warmup_epochs: Optional[float] = None  # None = 10 % of the epochs, at most 5 (linear warm-up)
    augment: str = "auto"  # auto (pad_crop up to 64 px, rrc above) | rrc | pad_crop | none
    hflip: Optional[bool] = None  # None = flip, except for digits / MNIST
    mode: str = "auto"  # auto (heads if pretrained/weights else joint) | joint | heads
    pretrained: bool = False
    loss: str = "scan"  # scan (default) | paper (the official code's loss); fills the None loss keys below
    kd: bool = True  # distillation from the deepest exit
    feature_hint: bool = True
    attention: bool = True
    kd_lambda: Optional[float] = None  # share of KD in each shallow exit's loss
    temperature: Optional[float] = None
    hint_weight: Optional[float] = None  # on the mean squared error; the paper's 5e-7 * sum at batch 128 x 512 dims
    kd_ramp: Optional[float] = None  # KD weight ramps 0 -> kd_lambda over this fraction of training
    exit_weights: Optional[list] = None  # loss weight per shallow exit; None = the preset's, for each
    exit_grad: Optional[float] = None  # share of the shallow exits' gradient that reaches the backbone
    kd_teacher: Optional[str] = None  # last (the paper: the deepest exit teaches) | ensemble (mean of all exits)
    last_weight: Optional[float] = None  # loss weight of the deepest exit
    heads: str = "slim"  # slim | paper
    head_width: Optional[int] = None  # None = min(128, max(16, backbone features / 4))
    splits: Optional[list] = None  # module paths; None = the backbone's defaults
    val_fraction: float = 0.1
    seed: int = 0
    workers: Optional[int] = None
    amp: str = "auto"  # auto (bf16/fp16 on CUDA, off on CPU) | bf16 | fp16 | off
    channels_last: str = "auto"  # auto (= on: NHWC is faster on CPU and CUDA) | on | off
    label_smoothing: float = 0.0
    # -- the heads-only phase after joint training (issue 22; training/phases.py) --
    heads_epochs: Optional[int] = None  # heads-only epochs after the joint ones; None = auto_heads_epochs
    heads_lr: Optional[float] = None  # their lr, cosine to 0; None = the joint phase's lr (its peak)
    heads_last: bool = True  # the heads phase also trains the backbone past the last split (deepest exit only)
    last_lr_scale: Optional[float] = None  # joint: lr multiple for the backbone past the last split; None = auto_last_lr_scale

    def to_dict(self) -> dict:
        return asdict(self)

    def validate(self, source: Optional[str] = None) -> None:
        """Usage errors for values that can never work (checked before anything heavy runs): every
        field by type and range (booleans are booleans, lists are lists, numbers finite).
        ``source``: the recipe file the values came from, named in the error."""
        where = f"recipe {source}: " if source else ""
        for key, rule in RULES.items():
            value = getattr(self, key)
            hint = _check(rule, value)
            if hint:
                shown = repr(value) if not isinstance(value, (list, dict)) or len(repr(value)) < 60 else type(value).__name__
                raise UsageError(f"{where}{key} = {shown} is not valid: give {hint}")


# -- the rule of every field: (kind, allowed); kinds: str, bool, int, num, choice, list[str], list[num], list[int]
def _num(low=None, high=None, low_in=True, high_in=True, none=False):
    return ("num", (low, high, low_in, high_in, none))


def _int(low, none=False):
    return ("int", (low, none))


RULES = {
    "description": ("str", (True, False)), "backbone": ("str", (False, True)), "data": ("str", (False, True)),
    "image_column": ("str", (False, True)), "label_column": ("str", (False, True)),
    "streaming": ("bool", False), "img_size": _int(8, none=True), "epochs": _int(1), "batch_size": _int(1),
    "optimizer": ("choice", ("sgd", "adamw")), "lr": _num(0, low_in=False, none=True),
    "momentum": _num(0, 1, high_in=False), "weight_decay": _num(0, none=True),
    "schedule": ("choice", ("multistep", "cosine", "constant")), "milestones": ("list[int]", False),
    "gamma": _num(0, low_in=False), "warmup_epochs": _num(0, none=True),
    "augment": ("choice", ("auto", "rrc", "pad_crop", "none")), "hflip": ("bool", True),
    "mode": ("choice", ("auto", "joint", "heads")), "pretrained": ("bool", False),
    "loss": ("choice", tuple(LOSS_PRESETS)), "kd": ("bool", False), "feature_hint": ("bool", False),
    "attention": ("bool", False), "kd_lambda": _num(0, 1, none=True), "temperature": _num(0, low_in=False, none=True),
    "hint_weight": _num(0, none=True), "kd_ramp": _num(0, 1, none=True), "exit_weights": ("list[num]", True),
    "exit_grad": _num(0, 1, none=True), "kd_teacher": ("choice", (None, "last", "ensemble")),
    "last_weight": _num(0, low_in=False, none=True), "heads": ("choice", HEAD_PRESETS),
    "head_width": _int(1, none=True), "splits": ("list[str]", True), "val_fraction": _num(0, 1, False, False),
    "seed": _int(0), "workers": _int(0, none=True), "amp": ("choice", ("auto", "bf16", "fp16", "off")),
    "channels_last": ("choice", ("auto", "on", "off")), "label_smoothing": _num(0, 1, high_in=False),
    # the heads-only phase after joint training (issue 22, training/phases.py)
    "heads_epochs": _int(0, none=True), "heads_lr": _num(0, low_in=False, none=True), "heads_last": ("bool", False),
    "last_lr_scale": _num(0, low_in=False, none=True),
}


def _is_int(v) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _is_num(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def _check(rule, value) -> Optional[str]:
    """None when ``value`` obeys ``rule``, else what to give instead."""
    kind, arg = rule
    if kind == "choice":
        return None if value in arg else f"one of {', '.join(a for a in arg if a)}"
    if kind == "bool":
        return None if isinstance(value, bool) or (arg and value is None) else "true or false"
    if kind == "str":
        empty_ok, none_ok = arg
        ok = (none_ok and value is None) or (isinstance(value, str) and (empty_ok or value.strip() != ""))
        return None if ok else "a name in quotes"
    if kind == "int":
        low, none_ok = arg
        return None if (none_ok and value is None) or (_is_int(value) and value >= low) else f"a whole number of at least {low}"
    if kind == "num":
        low, high, low_in, high_in, none_ok = arg
        if none_ok and value is None:
            return None
        ok = _is_num(value) and (low is None or (value >= low if low_in else value > low)) and (
            high is None or (value <= high if high_in else value < high))
        span = f"{'[' if low_in else '('}{low:g}, {'inf' if high is None else f'{high:g}'}{']' if high_in and high is not None else ')'}"
        return None if ok else f"a finite number in {span}"
    # lists: a TOML array (a string would be split into characters)
    if arg and value is None:
        return None
    item = kind[5:-1]
    checks = {"int": lambda v: _is_int(v) and v >= 1, "num": lambda v: _is_num(v) and v >= 0,
              "str": lambda v: isinstance(v, str) and v.strip() != ""}[item]
    what = {"int": "whole numbers of at least 1", "num": "finite numbers of at least 0", "str": "names in quotes"}[item]
    return None if isinstance(value, list) and all(checks(v) for v in value) else f"a list of {what}, e.g. [...]"


# heads-only epochs added after joint training when the recipe leaves heads_epochs unset (issue 22):
# 0.3 of the joint epochs, rounded, at most 5, none for runs of up to 3 epochs (smoke runs stay as
# short as asked). With the ensemble teacher and heads_last (both defaults for joint training) it
# raised every exit over joint SCAN on Fashion-MNIST, the deepest one included, and stayed within
# noise on digits (bench/results/quality.md, issue 22).
AUTO_HEADS_FRACTION, AUTO_HEADS_MAX = 0.3, 5


# the learning-rate multiple of the section past the last split (it feeds the deepest exit only) in
# joint training from scratch on small images when the recipe leaves last_lr_scale unset (issue 22):
# that section learns slowest (validation accuracy after 1 of 5 epochs on Fashion-MNIST: 31 % at the
# deepest exit, 62-68 % at the others) and was still under-fitted when a short schedule ended; 4x
# raised the deepest exit by about a point on Fashion-MNIST and digits, 3 seeds; 2x, 6x and 8x did
# less or cost the shallow exits (bench/results/quality.md).
# Not measured on large images or long schedules, so those keep one rate; the paper's loss keeps it too.
AUTO_LAST_LR_SCALE = 4.0


def auto_last_lr_scale(mode: str, loss: str, img_size: int) -> float:
    return AUTO_LAST_LR_SCALE if mode == "joint" and loss == "scan" and is_small_image(img_size) else 1.0


def auto_heads_epochs(epochs: int, mode: str) -> int:
    """The default length of the heads phase: none in heads mode (the whole run is heads-only)."""
    if mode != "joint" or epochs <= 3:
        return 0
    return min(AUTO_HEADS_MAX, int(AUTO_HEADS_FRACTION * epochs + 0.5))


def loss_settings(recipe: Recipe, num_shallow: int = 3) -> dict:
    """The loss keys with the preset filling what the recipe leaves None."""
    preset = LOSS_PRESETS[recipe.loss]
    out = {k: (preset[k] if getattr(recipe, k) is None else getattr(recipe, k))
           for k in ("kd_lambda", "temperature", "hint_weight", "kd_ramp", "exit_grad", "kd_teacher", "last_weight")}
    out["exit_weights"] = list(recipe.exit_weights) if recipe.exit_weights is not None else [preset["exit_weight"]] * num_shallow
    return out


def is_small_image(img_size: int) -> bool:
    return int(img_size) <= SMALL_IMAGE


def base_lr_per_256(recipe: Recipe, mode: str) -> float:
    """Learning rate per 256 images of global batch: SGD 0.4 from scratch (0.1 at batch 64), 0.1 for
    heads on a trained backbone; AdamW 1e-3. On digits, 10 epochs at 0.2 per 256 (the paper's CIFAR
    rate) left the plain network at 93 % and at 0.4 per 256 at 97.5 % (bench/results/quality.md):
    short schedules on small data need the larger step."""
    if recipe.optimizer == "adamw":
        return 1e-3
    return 0.1 if mode == "heads" else 0.4


def image_size(recipe: "Recipe", spec) -> int:
    """The one image-size rule: the side a run trains and predicts at is --img-size (the recipe's
    ``img_size``), else the backbone's declared input size (checked against a real forward at build)."""
    return int(recipe.img_size or spec.input_size)


def resolve(recipe: Recipe, *, img_size: int, mode: str, world_size: int = 1, num_shallow: int = 3) -> Recipe:
    """Fill every "auto"/None training value from the image size, data, batch size and mode.

    Nothing set by the user (defaults < recipe < flags) is changed."""
    from dataclasses import replace

    small = is_small_image(img_size)
    global_batch = recipe.batch_size * max(1, world_size)
    data = (recipe.data or "digits").strip().lower()
    changes = dict(img_size=int(img_size), mode=mode)
    if recipe.lr is None:
        changes["lr"] = round(base_lr_per_256(recipe, mode) * global_batch / 256, 6)
    if recipe.weight_decay is None:
        changes["weight_decay"] = 5e-4 if small else 1e-4
    auto_warmup = round(min(5.0, 0.1 * recipe.epochs), 3)
    if recipe.warmup_epochs is None:
        changes["warmup_epochs"] = auto_warmup if recipe.schedule == "cosine" else 0.0
    elif recipe.warmup_epochs >= recipe.epochs:  # e.g. a recipe's warm-up with a short --epochs
        import logging

        logging.getLogger("scan_cli").info(f"warm-up of {recipe.warmup_epochs:g} epochs would fill all {recipe.epochs}: "
                                           f"shortened to {auto_warmup:g}")
        changes["warmup_epochs"] = auto_warmup
    if recipe.augment == "auto":
        changes["augment"] = "pad_crop" if small else "rrc"
    if recipe.hflip is None:
        changes["hflip"] = not any(data == d or data.startswith(d + "-") for d in NO_FLIP_DATA)
    changes.update({k: v for k, v in loss_settings(recipe, num_shallow).items() if getattr(recipe, k) is None})
    if recipe.kd_teacher is None and recipe.loss == "scan" and mode == "joint":
        # joint training from scratch: the ensemble of exits teaches every exit, the deepest one too;
        # it starts as the weakest exit on small data. A trained backbone's deepest exit stays the teacher.
        changes["kd_teacher"] = "ensemble"
    if recipe.last_lr_scale is None:
        changes["last_lr_scale"] = auto_last_lr_scale(mode, recipe.loss, img_size)
    # the heads phase: only after joint training (a heads-only run is all heads phase)
    if recipe.heads_epochs is None or mode != "joint":
        changes["heads_epochs"] = auto_heads_epochs(recipe.epochs, mode) if mode == "joint" else 0
    if recipe.heads_lr is None:
        # a warm restart at the joint peak: the deepest exit is still under-fitted when joint training
        # ends, and the last section learns at this rate; the quarter rate of a heads-only run left every
        # exit lower (Fashion-MNIST, bench/results/quality.md, issue 22)
        changes["heads_lr"] = changes.get("lr", recipe.lr)
    resolved = replace(recipe, **changes)
    resolved.validate()
    return resolved


def batch_for_data(asked: Recipe, resolved: Recipe, train_images: Optional[int], *, world_size: int = 1,
                   num_shallow: int = 3) -> Recipe:
    """The batch is never larger than the training set (each process's share): only full batches train,
    so a larger batch would train on nothing. Resolved again from ``asked`` so an automatic lr follows it."""
    from dataclasses import replace

    most = max(1, (train_images or 0) // max(1, world_size))
    if not train_images or resolved.batch_size <= most:  # streamed data: its size is unknown
        return resolved
    return resolve(replace(asked, batch_size=most), img_size=resolved.img_size, mode=resolved.mode,
                   world_size=world_size, num_shallow=num_shallow)


def describe(recipe: Recipe, name: Optional[str], asked_batch: Optional[int] = None) -> str:
    """One line with the resolved recipe's key values, for ``fit``'s start."""
    sched = {"cosine": f"{recipe.warmup_epochs:g} warm-up epoch(s) then cosine",
             "multistep": f"lr x {recipe.gamma:g} at epochs {', '.join(map(str, recipe.milestones)) or '(none)'}",
             "constant": "constant lr"}[recipe.schedule]
    if recipe.schedule != "cosine" and recipe.warmup_epochs:
        sched = f"{recipe.warmup_epochs:g} warm-up epoch(s), then {sched}"
    aug = {"pad_crop": "pad-and-crop", "rrc": "random-resized-crop", "none": "no augmentation"}[recipe.augment]
    kd = (f"KD lambda {recipe.kd_lambda:g} T {recipe.temperature:g} from the "
          + ("ensemble" if recipe.kd_teacher == "ensemble" else "deepest exit")
          + (f" ramped over {recipe.kd_ramp:.0%}" if recipe.kd_ramp else "") if recipe.kd else "no KD")
    batch = f"{recipe.batch_size}" + (f" (the whole training set; {asked_batch} asked)"
                                      if asked_batch and asked_batch > recipe.batch_size else "")
    return (f"recipe {name or 'defaults'}: {recipe.epochs} epochs, batch {batch}, {recipe.optimizer} lr {recipe.lr:g} "
            f"wd {recipe.weight_decay:g}, {sched}; {aug} at {recipe.img_size} px{', flip' if recipe.hflip else ', no flip'}; "
            f"mode {recipe.mode}; loss {recipe.loss} ({kd}, exit grad {recipe.exit_grad:g})" +
            (f"; the backbone past the last split at {recipe.last_lr_scale:g}x lr"
             if recipe.mode == "joint" and recipe.last_lr_scale not in (None, 1.0) else "") +
            (f"; then {recipe.heads_epochs} heads-only epoch(s) at lr {recipe.heads_lr:g}"
             + (" (and the backbone past the last split)" if recipe.heads_last else "") if recipe.heads_epochs else ""))


FIELDS = {f.name for f in fields(Recipe)}


def available() -> dict[str, Path]:
    """Recipe name -> file, from the installed package."""
    from importlib import resources

    root = resources.files("scan_cli.builtin_recipes")
    return {p.name[:-5]: Path(str(p)) for p in root.iterdir() if p.name.endswith(".toml")}


def _read_toml(path: Path) -> dict:
    try:
        import tomllib
    except ModuleNotFoundError:  # Python 3.10
        import tomli as tomllib
    try:
        return tomllib.loads(Path(path).read_text())
    except (OSError, ValueError) as exc:
        raise UsageError(f"cannot read recipe {path}: {str(exc).splitlines()[0] if str(exc) else type(exc).__name__}: fix the TOML") from None


def load_recipe(name_or_path: Optional[str], overrides: Optional[dict] = None) -> Recipe:
    """Defaults, then the recipe file, then ``overrides`` (flags that were given, not None)."""
    values: dict = {}
    if name_or_path:
        known = available()
        if name_or_path in known:
            path = known[name_or_path]
        elif Path(name_or_path).is_file():
            path = Path(name_or_path)
        else:
            raise ScanError(f"unknown recipe '{name_or_path}': use one of {', '.join(sorted(known))} or a .toml file")
        values = _read_toml(path)
        unknown = sorted(set(values) - FIELDS)
        if unknown:
            raise UsageError(f"recipe {path.name} has unknown key(s) {', '.join(unknown)}: valid keys are listed by 'scan fit --print-recipe'")
        Recipe(**values).validate(source=str(path))  # the file's own values, blamed on the file
    values.update({k: v for k, v in (overrides or {}).items() if v is not None})
    recipe = Recipe(**values)
    recipe.validate()
    return recipe
