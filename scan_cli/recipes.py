"""Recipes: named training settings. Precedence: built-in defaults < recipe file < command-line flags.

Recipes are TOML files shipped inside the package (`recipes/` in the repo, `scan_cli.builtin_recipes` when
installed) and addressable by name, or any .toml path.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Optional

from .errors import ScanError, UsageError


@dataclass
class Recipe:
    description: str = ""
    backbone: Optional[str] = None  # default backbone when none is named on the command line
    data: Optional[str] = None  # None = the digits set
    img_size: Optional[int] = None  # None = the backbone's data config
    epochs: int = 10
    batch_size: int = 64  # per process
    optimizer: str = "sgd"  # sgd | adamw
    lr: float = 0.1
    momentum: float = 0.9
    weight_decay: float = 5e-4
    schedule: str = "multistep"  # multistep | cosine | constant
    milestones: list = field(default_factory=list)  # epochs where multistep divides lr by 1/gamma
    gamma: float = 0.1
    warmup_epochs: int = 0
    augment: str = "rrc"  # rrc | pad_crop | none
    hflip: bool = True
    mode: str = "auto"  # auto (heads if pretrained/weights else joint) | joint | heads
    pretrained: bool = False
    kd: bool = True  # distillation from the deepest exit
    feature_hint: bool = True
    attention: bool = True
    kd_lambda: float = 0.5
    temperature: float = 3.0
    hint_weight: float = 0.03  # on the mean squared error; the paper's 5e-7 * sum at batch 128 x 512 dims
    heads: str = "slim"  # slim | paper
    head_width: Optional[int] = None  # None = min(128, backbone features / 4)
    splits: Optional[list] = None  # module paths; None = the backbone's defaults
    val_fraction: float = 0.1
    seed: int = 0
    workers: Optional[int] = None
    amp: str = "auto"  # auto (bf16/fp16 on CUDA, off on CPU) | bf16 | fp16 | off
    channels_last: str = "auto"  # auto (= on: NHWC is faster on CPU and CUDA) | on | off
    label_smoothing: float = 0.0

    def to_dict(self) -> dict:
        return asdict(self)

    def validate(self) -> None:
        choices = {"optimizer": ("sgd", "adamw"), "schedule": ("multistep", "cosine", "constant"),
                   "augment": ("rrc", "pad_crop", "none"), "mode": ("auto", "joint", "heads"),
                   "heads": ("slim", "paper"), "amp": ("auto", "bf16", "fp16", "off"),
                   "channels_last": ("auto", "on", "off")}
        for key, allowed in choices.items():
            if getattr(self, key) not in allowed:
                raise UsageError(f"recipe value {key}={getattr(self, key)!r} is not one of {', '.join(allowed)}")
        for key in ("epochs", "batch_size"):
            if int(getattr(self, key)) < 1:
                raise UsageError(f"{key} must be at least 1")
        if not 0 < self.val_fraction < 1:
            raise UsageError("val_fraction must be between 0 and 1")
        if not 0 <= self.kd_lambda <= 1:
            raise UsageError("kd_lambda must be between 0 and 1")


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
        raise ScanError(f"cannot read recipe {path}: {exc}") from None


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
            raise ScanError(f"recipe {path.name} has unknown key(s) {', '.join(unknown)}: valid keys are listed by 'scan fit --print-recipe'")
    values.update({k: v for k, v in (overrides or {}).items() if v is not None})
    recipe = Recipe(**values)
    recipe.validate()
    return recipe
