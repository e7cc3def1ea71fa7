"""What `scan fit` checks before torch, timm or the data are loaded (issue 24: a first mistake is
answered in well under 1.5 s instead of after 5-7 s of imports and a model build).

In this order, after the flags (`recipes.load_recipe`): the weights file, the data source, the
backbone id and its split points, pretrained weights. Each check asks the module that owns the
decision (`data.factory.check_data`, the registry, `backbones.verify.check_split_modules`, the
timm provider), so the messages are the ones the full run gives. Whatever cannot be decided
cheaply here (a split point of a backbone that declares no units, pretrained weights of a plugin
backbone, a cached dataset that may be incomplete) is left to the run, which checks it again.

Imports nothing heavy: no torch, timm, `datasets` or scikit-learn.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Optional

from ..errors import ScanError, UsageError


def check_fit(backbone: Optional[str], recipe, *, weights: Optional[Path] = None, ema: bool = False,
              resume: Optional[Path] = None, data: bool = True) -> None:
    """Raise the first mistake `scan fit` would meet. ``data=False`` (e.g. --print-recipe) skips
    what only training needs: the data and pretrained weights. On --resume the run names its
    backbone (its provider's own message comes from the run)."""
    check_weights_file(weights, ema)
    if data:
        from ..data.factory import check_data, data_source

        check_data(recipe.data)
        kind = data_source(recipe.data)[0]
        if recipe.streaming and kind in ("digits", "folder"):  # nothing to stream: the flag would do nothing
            raise UsageError(f"--streaming streams a Hugging Face dataset (a Hub id or parquet/arrow files), not "
                             f"{'digits' if kind == 'digits' else 'an image folder'}: drop --streaming")
    if resume is not None:
        return
    spec = check_backbone(backbone, recipe.splits)
    if data and recipe.pretrained:
        check_pretrained(spec)


def check_weights_file(weights: Optional[Path], ema: bool) -> None:
    if ema and weights is None:
        raise UsageError("--ema picks the EMA weights of a --weights checkpoint: add --weights FILE")
    if weights is not None and not Path(weights).is_file():
        raise UsageError(f"--weights {weights}: no such file")


def check_backbone(backbone: str, splits=None):
    """The registry's spec for ``backbone`` (an unknown id fails here); ``splits`` (--splits)
    checked against the units the spec declares, when it declares them."""
    from ..backbones.registry import default_registry
    from ..backbones.verify import check_split_modules

    spec = default_registry().get(backbone)
    if splits and spec.unit_names:
        check_split_modules(spec, spec.unit_names, list(splits))
    return spec


def check_pretrained(spec) -> None:
    """timm weights that are surely not cached, offline (HF_HUB_OFFLINE=1: the run's message,
    `loop._check_hub_reachable`) or with the Hub unreachable (instead of download retries); without
    importing timm. Other providers give their own error when building (issue 12)."""
    if spec.provider != "timm":
        return
    from ..backbones.timm_families import pretrained_cached

    if pretrained_cached(spec.id) is not False:
        return
    if os.environ.get("HF_HUB_OFFLINE") == "1":
        raise weights_not_cached(spec.id)
    from ..data.hub import _hub_reachable

    if not _hub_reachable():
        raise ScanError(f"could not get pretrained weights for {spec.id} (the Hugging Face Hub is unreachable and "
                        "they are not cached): check the network, or pass --weights FILE")


def weights_not_cached(model_id: str) -> ScanError:
    return ScanError(f"pretrained weights for {model_id} are not cached and HF_HUB_OFFLINE=1: "
                     "go online once, or pass --weights FILE")
