"""The study-level figures in optuna-dashboard, refreshed as a study grows.

:func:`refresh_study_figures` stores the plotly figures of :mod:`evo_fpn.viz.figures` with
``optuna_dashboard.save_plotly_graph_object`` under fixed ids, so every refresh replaces the
previous version; :class:`StudyFiguresCallback` refreshes them as the study grows.
optuna-dashboard is imported lazily: only saving needs it.
"""

from __future__ import annotations

import optuna

from evo_fpn.errors import UsageError
from evo_fpn.study.analysis import FINISHED

FIGURE_IDS: tuple[str, ...] = ("best-so-far-ap", "ap-vs-flops", "unique-architectures", "decision-frequencies")
"""Graph-object ids under which :func:`refresh_study_figures` stores the study figures."""


def refresh_study_figures(study: optuna.Study) -> list[str]:
    """Build the study-level figures and save them for optuna-dashboard; return their ids.

    Each figure is stored under a fixed id from :data:`FIGURE_IDS`, so a refresh overwrites
    the previous one instead of piling up copies. Studies without finished trials get none.
    """
    try:
        from optuna_dashboard import save_plotly_graph_object
    except ImportError:  # optional extra
        raise UsageError(
            "optuna-dashboard is not installed: pip install 'evo-fpn[dashboard]' (or optuna-dashboard)"
        ) from None
    from evo_fpn.viz import figures
    from evo_fpn.viz.study_data import StudyData

    data = StudyData.from_study(study)
    if not data.finished:
        return []
    builders = {
        "best-so-far-ap": lambda: figures.best_so_far_figure([data], x="trial"),
        "ap-vs-flops": lambda: figures.ap_vs_flops_figure(data),
        "unique-architectures": lambda: figures.unique_architectures_figure([data]),
        "decision-frequencies": lambda: figures.decision_frequency_figure(data),
    }
    saved = []
    for graph_id in FIGURE_IDS:
        fig = builders[graph_id]()
        if fig is None:
            continue
        saved.append(save_plotly_graph_object(study, fig, graph_object_id=graph_id))
    return saved


class StudyFiguresCallback:
    """``study.optimize`` callback: refresh the dashboard figures every ``every`` trials.

    Counts finished trials in the storage (not in this process), so with many workers the
    figures are refreshed about every ``every`` trials of the whole study. Refreshing is
    best effort: a failure is logged and never fails the search.
    """

    def __init__(self, *, every: int = 10) -> None:
        if not isinstance(every, int) or every < 1:
            raise ValueError(f"every must be a positive integer, got {every!r}")
        self.every = every

    def __call__(self, study: optuna.Study, trial: optuna.trial.FrozenTrial) -> None:
        n = len(study.get_trials(deepcopy=False, states=FINISHED))
        if n == 0 or n % self.every:
            return
        try:
            refresh_study_figures(study)
        except Exception as exc:  # never let a figure kill a days-long search
            optuna.logging.get_logger("evo_fpn.study.artifacts").warning("refreshing study figures failed: %s", exc)
