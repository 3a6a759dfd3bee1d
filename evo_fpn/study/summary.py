"""What a person sees of a search: the progress line while it runs, the summary at its end.

The progress bar counts the whole study's finished trials (all workers), with its best AP;
the summary names the best trial, its AP breakdown and architecture, and the exact command
that opens the study in optuna-dashboard. "Best" follows the study's direction. A study of
several objectives also lists its Pareto front (``study.best_trials``: feasible trials only),
and a study with budgets says how many architectures were over them (never trained).
"""

from __future__ import annotations

import sys
from pathlib import Path

import optuna
from optuna.trial import TrialState

from evo_fpn import record
from evo_fpn.arch.spec import ArchSpec
from evo_fpn.storage import rdb as st
from evo_fpn.study.analysis import best_trial
from evo_fpn.study.artifacts import dashboard_command

AP_KEYS = record.AP_METRICS
AP_LABELS = record.AP_LABELS


class Progress:
    """Trial i of N, best AP, elapsed and ETA (tqdm) for the whole study."""

    def __init__(self, *, total: int, initial: int, enabled: bool, desc: str) -> None:
        self.bar = None
        if enabled:
            from tqdm import tqdm

            self.bar = tqdm(total=total, initial=min(initial, total), desc=desc, unit="trial", dynamic_ncols=True)

    def update(self, finished: int, running: int, best: float | None, note: str = "") -> None:
        if self.bar is None:
            return
        self.bar.update(max(0, min(finished, self.bar.total) - self.bar.n))
        post = {"best AP": f"{best:.4f}" if best is not None else "-", "running": running}
        if note:
            post["note"] = note
        self.bar.set_postfix(post, refresh=True)

    def write(self, line: str) -> None:
        if self.bar is not None:
            self.bar.write(line, file=sys.stderr)
        else:
            print(line, file=sys.stderr)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


def summary(
    study: optuna.Study,
    *,
    n_trials: int,
    url: str,
    sampler: str,
    fingerprint: str,
    artifact_dir: Path | None,
    elapsed: float,
) -> str:
    """The end-of-run report of ``study``: counts, best trial with its AP breakdown and
    architecture, and the command that browses the study (password masked)."""
    trials = study.get_trials(deepcopy=False)
    by_state = {s: sum(t.state == s for t in trials) for s in TrialState}
    finished = by_state[TrialState.COMPLETE] + by_state[TrialState.PRUNED]
    cached = sum(record.CACHED_FROM in t.user_attrs for t in trials if t.state == TrialState.COMPLETE)
    over = sum(record.INFEASIBLE in t.user_attrs for t in trials if t.state == TrialState.PRUNED)
    lines = [
        f"study {study.study_name}: {finished} of {n_trials} trials finished "
        f"({by_state[TrialState.COMPLETE]} complete, {cached} of them re-used duplicates, "
        f"{by_state[TrialState.PRUNED]} pruned"
        + (f" ({over} over budget, never trained)" if over else "")
        + f", {by_state[TrialState.FAIL]} failed) in {_fmt_s(elapsed)}",
        f"storage: {st.mask_url(url)}   sampler: {sampler}   fingerprint: {fingerprint}",
    ]
    names = study.metric_names or [f"value{i}" for i in range(len(study.directions))]
    if len(study.directions) > 1:
        front = sorted(study.best_trials, key=lambda t: [float(v) for v in t.values[1:]])
        lines.append("")
        lines.append(f"Pareto front of {' vs '.join(names)} ({len(front)} trials, feasible only):")
        for t in front:
            cols = [
                f"{record.LABELS.get(n, n)} {record.display_value(n, v):.4g}"
                for n, v in zip(names, t.values, strict=True)
            ]
            lines.append(f"  #{t.number:<4d} " + "   ".join(cols))
    best = best_trial(trials, study.directions[0])
    if best is not None:
        lines.append("")
        extra = (
            f" (re-used from trial {best.user_attrs[record.CACHED_FROM]})"
            if record.CACHED_FROM in best.user_attrs
            else ""
        )
        ref = f" [{best.user_attrs['reference']}]" if "reference" in best.user_attrs else ""
        lines.append(f"best trial #{best.number}{ref}: AP {best.values[0]:.4f}{extra}")
        ap = [f"{AP_LABELS[k]} {best.user_attrs[k]:.4f}" for k in AP_KEYS if k in best.user_attrs]
        if ap:
            lines.append("  " + "   ".join(ap))
        if record.SPEC in best.user_attrs:
            spec = ArchSpec.from_json(best.user_attrs[record.SPEC])
            lines.append(f"architecture (canonical hash {spec.canonical_hash()}):")
            lines.extend("  " + row for row in spec.table().splitlines())
    lines.append("")
    lines.append("browse the study:")
    lines.append("  " + dashboard_command(st.normalise_url(url), artifact_dir))
    return "\n".join(lines)


def _fmt_s(seconds: float) -> str:
    s = int(round(seconds))
    return f"{s // 3600}h{s % 3600 // 60:02d}m{s % 60:02d}s" if s >= 3600 else f"{s // 60}m{s % 60:02d}s"
