"""What a prediction call returns and how it is shown: one ``Prediction`` per image, the
``PredictionReport`` with its summary (exit shares, counted MACs, timing), the summary lines people
read on stderr, and the CSV. Both engines build the same report."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

from .. import files
from ..policy import describe


@dataclass
class Prediction:
    path: str
    class_index: int
    label: str
    confidence: float  # softmax probability of `label` in the answering logits
    score: float  # the exit rule's score at the answering exit (equals confidence for max_softmax)
    exit_index: int  # 0-based
    num_exits: int
    macs: float  # cumulative MACs spent on this image (backbone up to its exit + heads on the way)
    top_k: list = field(default_factory=list)  # [{"label", "probability"}], best first

    @property
    def exit(self) -> int:
        return self.exit_index + 1

    def to_dict(self) -> dict:
        return {"path": self.path, "label": self.label, "class_index": self.class_index,
                "confidence": self.confidence, "score": self.score, "exit": self.exit,
                "exit_index": self.exit_index, "num_exits": self.num_exits, "macs": self.macs,
                "top_k": self.top_k}


@dataclass
class PredictionReport:
    predictions: list  # Prediction, in input order
    errors: list  # {"path", "error"}, in input order
    summary: dict
    drift: Optional[dict] = None  # the drift check (calibration/drift.py), {"status": "off"} with --drift off

    def to_dict(self) -> dict:
        doc = {"predictions": [p.to_dict() for p in self.predictions], "errors": list(self.errors),
               "summary": self.summary}
        if self.drift is not None:
            doc["drift"] = self.drift
        return doc

    @property
    def exit_code(self) -> int:
        """0 all images predicted, 3 some failed (at least one predicted), 1 none predicted."""
        if not self.errors:
            return 0
        return 3 if self.predictions else 1


def summarize(predictions: list, num_errors: int, num_exits: int, costs: list, backbone_macs: float,
              seconds: float) -> dict:
    n = len(predictions)
    counts = [0] * num_exits
    for p in predictions:
        counts[p.exit_index] += 1
    avg = sum(costs[k] * c for k, c in enumerate(counts)) / n if n else 0.0
    return {
        "images": n + num_errors,
        "predicted": n,
        "errors": num_errors,
        "exit_counts": counts,
        "exit_shares": [c / n if n else 0.0 for c in counts],
        "exit_macs": [float(c) for c in costs],
        "avg_macs": avg,
        "backbone_macs": float(backbone_macs),
        "macs_ratio": avg / backbone_macs if backbone_macs and n else None,  # < 1: cheaper than the plain backbone
        "counted_speedup": backbone_macs / avg if avg else None,
        "seconds": seconds,  # wall-clock of decoding + inference (model loading and profiling excluded)
        "images_per_second": n / seconds if seconds > 0 else None,
    }


def format_macs(macs: float) -> str:
    """1.82G, 7.4M, 950.0K (multiply-accumulates, not FLOPs)."""
    if macs >= 1e9:
        return f"{macs / 1e9:.2f}G"
    if macs >= 1e6:
        return f"{macs / 1e6:.1f}M"
    return f"{macs / 1e3:.1f}K"


def summary_lines(summary: dict) -> list:
    """The people-facing summary (stderr)."""
    n, K = summary["predicted"], len(summary["exit_counts"])
    how = (f"batch {summary.get('batch_size')}, {summary.get('layout', '?')}, {summary.get('device', '?')}, "
           f"{summary.get('threads', '?')} threads")
    lines = [f"predicted {n} of {summary['images']} images, {summary['errors']} error(s), in {summary['seconds']:.2f} s"
             + (f" ({summary['images_per_second']:.1f} images/s, whole job from files: {how})" if summary["images_per_second"] else "")]
    if n:
        shares = "  ".join(f"{k + 1}/{K}: {s * 100:.1f}%" for k, s in enumerate(summary["exit_shares"]))
        lines.append(f"exits  {shares}")
        lines.append(
            f"average {format_macs(summary['avg_macs'])} MACs per image vs {format_macs(summary['backbone_macs'])} MACs "
            f"for the plain backbone: counted speed-up {summary['counted_speedup']:.2f}x"
        )
        cmp = summary.get("comparison")
        if cmp and cmp.get("realised_speedup"):
            from ..profiling import speed_sentence

            lines.append(speed_sentence(cmp["realised_speedup"], summary["counted_speedup"], cmp["images_per_second"],
                                        f"{cmp['what']}: {cmp['images']} images, {how}"))
        else:
            lines.append("realised speed-up: not measured (--compare-plain times the plain model on the same images)")
    policy = summary.get("policy")
    if policy:
        ts = ", ".join(describe(t) for t in policy["thresholds"])
        lines.append(f"thresholds {ts} (score {policy['score']}, fallback {policy['fallback']}; from {policy['source']})")
    return lines


def write_csv(report: PredictionReport, path: Path, top_k: int = 1) -> None:
    """One row per input image (failed ones carry only path and error), written atomically."""
    import csv


    k = max(1, min(top_k, max((len(p.top_k) for p in report.predictions), default=1)))
    cols = ["path", "label", "class_index", "confidence", "exit", "exit_index", "num_exits", "macs"]
    if k > 1:
        for i in range(1, k + 1):
            cols += [f"top{i}_label", f"top{i}_probability"]
    cols.append("error")
    rows = []
    for p in report.predictions:
        row = {"path": p.path, "label": p.label, "class_index": p.class_index, "confidence": f"{p.confidence:.6f}",
               "exit": p.exit, "exit_index": p.exit_index, "num_exits": p.num_exits, "macs": f"{p.macs:.0f}", "error": ""}
        if k > 1:
            for i, t in enumerate(p.top_k[:k], 1):
                row[f"top{i}_label"] = t["label"]
                row[f"top{i}_probability"] = f"{t['probability']:.6f}"
        rows.append(row)
    for e in report.errors:
        rows.append({"path": e["path"], "error": e["error"]})

    def write(tmp):
        with open(tmp, "w", newline="", encoding="utf-8") as f:
            writer = csv.DictWriter(f, fieldnames=cols, restval="")
            writer.writeheader()
            writer.writerows(rows)

    files.atomic_write(Path(path), write)


# -- what both engines' batch loops share -------------------------------------------------------------
def add_predictions(preds: dict, indices, paths, classes, top_i, top_p, exit_index, scores, costs, num_exits: int) -> None:
    """One batch's answers into ``preds`` (input position -> Prediction): ``top_i``/``top_p`` are the
    best classes and their probabilities per row, best first; ``costs[k]`` the cumulative MACs of exit k."""
    for row, index in enumerate(indices):
        e = int(exit_index[row])
        c = int(top_i[row][0])
        preds[index] = Prediction(
            path=str(paths[index]), class_index=c, label=str(classes[c]), confidence=float(top_p[row][0]),
            score=float(scores[row]), exit_index=e, num_exits=num_exits, macs=float(costs[e]),
            top_k=[{"label": str(classes[int(j)]), "probability": float(p)} for j, p in zip(top_i[row], top_p[row])],
        )


def build_report(preds: dict, errors: dict, paths, num_exits: int, costs, backbone_macs: float, seconds: float,
                 policy, **how) -> PredictionReport:
    """The report in input order, with the summary and how the call ran (device, batch, threads, ...)."""
    predictions = [preds[i] for i in sorted(preds)]
    error_list = [{"path": str(paths[i]), "error": errors[i]} for i in sorted(errors)]
    summary = summarize(predictions, len(error_list), num_exits, costs, backbone_macs, seconds)
    summary.update(policy=policy.to_dict(), **how)
    return PredictionReport(predictions, error_list, summary)
