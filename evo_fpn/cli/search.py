"""From your data to a better neck in one command: ``python -m evo_fpn.search NAME --data DIR``.

Runs the whole flow (:mod:`evo_fpn.study.pipeline`): the backbone stage and the supernet
(cached per machine), a supernet screen of N architectures (study ``NAME-screen``), the K best
trained stand-alone with the proxy (``NAME-finalists``), the best of those and torchvision's
FPN trained end to end with the same recipe and seeds (``NAME-retrain``), then a report and
exports in ``--out`` (default ``runs/NAME/``): ``best.json``, ``model.pt``, ``metrics.json``,
``report.html``, ``report.md``, ``neck.onnx`` and ``neck.torchscript.pt``.

The screen and the finalists are run by the ordinary runner (:func:`evo_fpn.cli.run.main`), so
each stage resumes where it stopped and another machine on the same storage joins it. Every
stage's settings and stored fingerprints are checked before anything is built or written.

Examples::

    python -m evo_fpn.search mydata --data ~/datasets/mydata          # a night on 2 CPU cores
    python -m evo_fpn.search demo --preset quick --screen 30 --finalists 2 --retrain-epochs 1 --seeds 1
"""

from __future__ import annotations

import argparse
import shlex
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from evo_fpn.cli import run, search_report
from evo_fpn.cli.common import ArgumentParser, UsageError, guard
from evo_fpn.storage import rdb as st
from evo_fpn.study import pipeline, retrain
from evo_fpn.study.config import PRESET_NAMES
from evo_fpn.study.open import Prepared

D = pipeline.DEFAULTS


def build_parser() -> argparse.ArgumentParser:
    p = ArgumentParser(prog="python -m evo_fpn.search", description=__doc__.splitlines()[0])
    p.add_argument("name", metavar="NAME", help="the search's name: studies NAME-screen, NAME-finalists, NAME-retrain")
    p.add_argument("--data", metavar="DIR", help="COCO-format dataset folder (default: the built-in digits)")
    p.add_argument("--preset", default="default", choices=PRESET_NAMES, help="proxy preset (default: default)")
    p.add_argument("--screen", type=int, default=int(D["screen"]), metavar="N",
                   help=f"architectures the supernet scores (default {D['screen']:g})")  # fmt: skip
    p.add_argument("--finalists", type=int, default=int(D["finalists"]), metavar="K",
                   help=f"best distinct ones trained stand-alone (default {D['finalists']:g})")  # fmt: skip
    p.add_argument("--retrain-epochs", type=float, default=D["retrain_epochs"], metavar="E",
                   help=f"end-to-end epochs of the winner and FPN (default {D['retrain_epochs']:g})")  # fmt: skip
    p.add_argument("--seeds", type=int, default=int(D["seeds"]), metavar="S",
                   help=f"end-to-end seeds of each (default {D['seeds']:g})")  # fmt: skip
    p.add_argument(
        "--storage", metavar="URL", help="storage URL (default: $EVO_FPN_STORAGE or sqlite:///studies/NAME.db)"
    )
    p.add_argument("--out", metavar="DIR", help="where the report and exports go (default: runs/NAME)")
    p.add_argument("--device", choices=("auto", "cpu", "cuda"), help="where to train (default: the study files')")
    p.add_argument("--threads", type=int, metavar="N", help="CPU threads (default: torch's choice)")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="override a setting of the screen and the finalists, as python -m evo_fpn.run --set "
                        "(e.g. proxy.epochs=8, supernet.epochs=16); the retrain uses the proxy's settings")  # fmt: skip
    p.add_argument("--no-progress", dest="progress", action="store_false", help="no progress bars")
    return p


def _log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def check_paths(out: Path, data: str | None) -> None:
    """The command's own bad inputs, before any stage is looked at."""
    if out.exists() and not out.is_dir():
        raise UsageError(f"--out {out} is a file: pass a folder (it is created if missing)")
    if data is not None and not Path(data).expanduser().is_dir():
        raise UsageError(f"--data {data}: no such folder: pass a COCO-format dataset folder (README, 'Your own data')")


def _prepared(stage: pipeline.Stage, *, build: bool) -> Prepared:
    return run.prepare(run.build_parser().parse_args(list(stage.argv)), build_stage=build)


@guard
def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = build_parser().parse_args(argv)
    url = st.resolve_url(args.storage, args.name)
    s = pipeline.Settings(
        name=args.name, url=url, preset=args.preset, data=args.data, screen=args.screen, finalists=args.finalists,
        retrain_epochs=args.retrain_epochs, seeds=args.seeds, device=args.device, threads=args.threads,
        sets=tuple(args.set), progress=args.progress,
    )  # fmt: skip
    s.check()
    out = Path(args.out or f"runs/{args.name}").expanduser()
    check_paths(out, args.data)
    plan = pipeline.stages(s)
    by_key = {stage.key: stage for stage in plan}
    # every stage checked (settings, storage, stored fingerprints) before anything is built or written
    screen_p = _prepared(by_key["screen"], build=False)
    finalists_p = _prepared(by_key["finalists"], build=False)
    retrain.check_stored(url, by_key["retrain"].study, s.retrain_epochs)
    proxy = finalists_p.task.task.config
    _print_plan(s, plan, screen_p, proxy.digits_train if proxy.data is None else None, out)

    t0 = time.monotonic()
    for i, key in enumerate(("screen", "finalists"), 2):
        stage = by_key[key]
        _stage_line(i, stage, url)
        code = run.main(list(stage.argv))
        if code:
            return code
        _log(f"[{i}/5] {stage.key} done ({pipeline.fmt_seconds(time.monotonic() - t0)} so far)")
    out.mkdir(parents=True, exist_ok=True)
    stage = by_key["retrain"]
    with pipeline.reading(url, by_key["finalists"].study) as study:
        assert study is not None
        spec, best = pipeline.winner(study)
    _log(f"winner: finalist trial #{best.number}, proxy AP {best.value:.4f}, spec hash {spec.canonical_hash()}")
    config = retrain.retrain_config(proxy, s.retrain_epochs)
    _stage_line(4, stage, url)
    retrain.run_retrain(
        url, stage.study, spec=spec, config=config, seeds=s.seeds, device=finalists_p.cfg.device, out=out,
        progress=s.progress,
    )  # fmt: skip
    _log(f"[4/5] retrain done ({pipeline.fmt_seconds(time.monotonic() - t0)} so far)")
    _log("[5/5] report and exports")
    written = search_report.write(s, plan, out=out, spec=spec, config=config, device=finalists_p.cfg.device,
                                  command=_command(argv))  # fmt: skip
    print(f"search {s.name} finished: {search_report.headline_of(written)}")
    for path in written["files"]:
        print(f"  {path}")
    return 0


def _command(argv: Sequence[str]) -> str:
    return "python -m evo_fpn.search " + " ".join(shlex.quote(a) for a in argv)


def _stage_line(i: int, stage: pipeline.Stage, url: str) -> None:
    with pipeline.reading(url, stage.study) as study:
        done, running = pipeline.counts(study)
    state = "new" if study is None else f"{done}/{stage.n_trials} finished"
    state += f", {running} running" if running else ""
    _log(f"[{i}/5] {stage.key}: study {stage.study}, {stage.n_trials} trials ({state}); {stage.what}")


def _print_plan(s: pipeline.Settings, plan: Sequence[pipeline.Stage], screen: Prepared, images: int | None,
                out: Path) -> None:  # fmt: skip
    task: Any = screen.task.task
    backbone = bool(task.store.cached and task.store.cache_path().is_file())
    supernet = bool(task.cache_path().is_file())
    est = pipeline.estimate(s, plan, backbone_cached=backbone, supernet_cached=supernet, train_images=images)
    what = {
        "build": "backbone stage + supernet (cached per machine; built as the screen starts)",
        **{stage.key: f"{stage.study}: {stage.n_trials} trials, {stage.what}" for stage in plan},
    }
    _log(f"search {s.name!r} in {st.mask_url(s.url)}, preset {s.preset}, data {s.data or 'built-in digits'}, "
         f"out {out}")  # fmt: skip
    for i, e in enumerate(est, 1):
        _log(f"  {i}. {what[e.stage]}: {pipeline.fmt_seconds(e.seconds)} ({e.basis})")
    known = [e.seconds for e in est if e.seconds is not None]
    guessed = any(not e.measured for e in est)
    _log(f"  5. report and exports in {out}: about a minute")
    total = pipeline.fmt_seconds(sum(known))
    _log(f"  total: {total}{' or more' if len(known) < len(est) else ''}{' (partly guessed)' if guessed else ''}")


if __name__ == "__main__":
    sys.exit(main())
