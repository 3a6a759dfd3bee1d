"""RLControllerSampler: masking, stored actions, learning, deterministic replay and resume."""

from __future__ import annotations

import base64
import datetime
import hashlib
import io
import json
import subprocess
import sys
import zlib
from collections.abc import Iterator
from pathlib import Path

import optuna
import pytest
import torch
from optuna.distributions import CategoricalDistribution, FloatDistribution
from optuna.trial import TrialState, create_trial
from samplers_worker import fast_dir, toy_value

from evo_fpn.arch.space import NasFpnSpace
from evo_fpn.samplers import RLControllerSampler
from evo_fpn.samplers.rl import CHECKPOINT_KEY, SAMPLE_KEY

optuna.logging.set_verbosity(optuna.logging.WARNING)
SPACE = NasFpnSpace()
WORKER = str(Path(__file__).with_name("samplers_worker.py"))


@pytest.fixture
def scratch(tmp_path: Path) -> Iterator[Path]:
    yield from fast_dir(tmp_path)


def nas_objective(trial: optuna.Trial) -> float:
    SPACE.suggest(trial)
    return toy_value(trial.params)


def run_nas(n: int, seed: int = 0, **kw) -> tuple[optuna.Study, RLControllerSampler]:
    sampler = RLControllerSampler(seed=seed, constraints=SPACE, **kw)
    study = optuna.create_study(sampler=sampler, direction="maximize")
    study.optimize(nas_objective, n_trials=n)
    return study, sampler


def test_samples_stay_inside_constraints_and_record_actions() -> None:
    study, sampler = run_nas(40, batch_size=5)
    names = SPACE.decision_order(SPACE.distributions)
    for t in study.trials:
        p = t.params
        for k in range(7):
            assert p[f"cell{k}.input_i"] != p[f"cell{k}.input_j"]
        assert sorted(p[f"cell{k}.level"] for k in range(2, 7)) == ["P3", "P4", "P5", "P6", "P7"]
        assert SPACE.encode(SPACE.decode(p)) == p
        if t.number == 0:  # nothing finished yet: no decisions known, built-in random draw
            assert SAMPLE_KEY not in t.system_attrs
            continue
        rec = t.system_attrs[SAMPLE_KEY]
        assert len(rec["actions"]) == len(rec["logp"]) == 28
        assert [SPACE.distributions[n].choices[a] for n, a in zip(names, rec["actions"], strict=True)] == [
            p[n] for n in names
        ]
        assert all(lp <= 0 for lp in rec["logp"])
        assert rec["version"] == t.number // 5  # sequential: n finished trials, n // 5 updates
    # the last output cell has one allowed level: masked to probability 1
    assert max(study.trials[-1].system_attrs[SAMPLE_KEY]["logp"][names.index("cell6.level")], -1e-9) == 0.0
    assert sampler.sync(study) == 40 // 5


@pytest.mark.parametrize("algorithm", ["ppo", "reinforce"])
def test_policy_learns_a_simple_reward(algorithm: str) -> None:
    def objective(trial: optuna.Trial) -> float:
        a = trial.suggest_categorical("a", ["p", "q", "r", "s"])
        b = trial.suggest_categorical("b", [0, 1, 2])
        return float(a == "r") + 0.5 * float(b == 2)

    sampler = RLControllerSampler(seed=0, batch_size=8, lr=0.05, algorithm=algorithm)
    study = optuna.create_study(direction="maximize", sampler=sampler)
    study.optimize(objective, n_trials=200)
    probs = sampler.decision_probabilities()
    assert probs["a"]["r"] > 0.6 and probs["b"][2] > 0.5, probs
    late = [t.value for t in study.trials[-40:]]
    early = [t.value for t in study.trials[:40]]
    assert sum(late) > sum(early) + 10


def test_minimize_direction_is_respected() -> None:
    def objective(trial: optuna.Trial) -> float:
        return float(trial.suggest_categorical("a", ["p", "q", "r"]) != "q")

    sampler = RLControllerSampler(seed=1, batch_size=8, lr=0.05)
    study = optuna.create_study(direction="minimize", sampler=sampler)
    study.optimize(objective, n_trials=120)
    assert sampler.decision_probabilities()["a"]["q"] > 0.6


def test_seeded_runs_reproducible_and_seeds_differ() -> None:
    a = [t.params for t in run_nas(30, seed=3, batch_size=5)[0].trials]
    b = [t.params for t in run_nas(30, seed=3, batch_size=5)[0].trials]
    c = [t.params for t in run_nas(30, seed=4, batch_size=5)[0].trials]
    assert a == b and a != c


def _history(values: list[float], states: list[TrialState] | None = None, order: list[int] | None = None):
    """Finished NAS trials with given values; ``order`` sets their completion order."""
    dist = SPACE.distributions
    base = datetime.datetime(2026, 1, 1)
    trials = []
    for i, v in enumerate(values):
        params = SPACE.encode(
            SPACE.decode({n: d.choices[(i * 7 + j) % len(d.choices)] for j, (n, d) in enumerate(dist.items())})
        )
        state = states[i] if states else TrialState.COMPLETE
        t = create_trial(
            state=state,
            value=v if state == TrialState.COMPLETE else None,
            params=params,
            distributions=dist,
            intermediate_values={0: v} if state == TrialState.PRUNED else None,
        )
        t.datetime_start = base
        t.datetime_complete = base + datetime.timedelta(seconds=(order[i] if order else i))
        trials.append(t)
    return trials


def _digest(trials) -> tuple[str, int]:
    study = optuna.create_study(direction="maximize")
    study.add_trials(trials)
    sampler = RLControllerSampler(batch_size=4, policy_seed=0)
    n = sampler.sync(study)
    return sampler.policy_digest(), n


def test_policy_is_a_function_of_history_failed_excluded_pruned_floored() -> None:
    values = [0.1 * i for i in range(12)]
    full = _digest(_history(values))
    assert full[1] == 3
    # the worker's seed does not matter: the policy starts from policy_seed
    study = optuna.create_study(direction="maximize")
    study.add_trials(_history(values))
    other = RLControllerSampler(seed=123, batch_size=4)
    other.sync(study)
    assert other.policy_digest() == full[0]
    # FAIL trials are left out entirely
    with_fail = _history(values + [5.0, 5.0], [TrialState.COMPLETE] * 12 + [TrialState.FAIL] * 2)
    assert _digest(with_fail) == full
    # a PRUNED trial counts as the floor (lowest complete reward so far), not its early value
    states = [TrialState.COMPLETE] * 12
    states[5] = TrialState.PRUNED
    pruned_high = values.copy()
    pruned_high[5] = 99.0
    pruned_low = values.copy()
    pruned_low[5] = -99.0
    assert _digest(_history(pruned_high, states)) == _digest(_history(pruned_low, states))
    assert _digest(_history(pruned_high, states)) != full
    # completion order, not trial number, defines the batches
    reordered = _digest(_history(values, order=[11 - i for i in range(12)]))
    assert reordered[1] == 3 and reordered[0] != full[0]


@pytest.mark.parametrize(("n", "batch", "every"), [(17, 4, 2), (41, 2, 1)])  # 2nd: rewinds past kept checkpoints
def test_late_trial_rewinds_to_the_same_policy_as_a_fresh_replay(n: int, batch: int, every: int) -> None:
    trials = _history([0.3 * ((i * 5) % 7) for i in range(n)])
    late = trials.pop(2)  # finished early in completion order, but seen last
    study = optuna.create_study(direction="maximize")
    study.add_trials(trials)
    sampler = RLControllerSampler(batch_size=batch, checkpoint_every=every)
    assert sampler.sync(study) == (n - 1) // batch
    before = sampler.policy_digest()
    study.add_trial(late)
    assert sampler.sync(study) == n // batch
    assert sampler.policy_digest() != before
    fresh = RLControllerSampler(batch_size=batch)
    fresh.sync(study)
    assert sampler.policy_digest() == fresh.policy_digest()


def _worker(storage: str, n: int, seed: int, digest: bool = False) -> dict:
    cmd = [sys.executable, WORKER, "--storage", storage, "--sampler", "rl", "--seed", str(seed)]
    cmd += ["--n-trials", str(n), "--settings", json.dumps({"batch_size": 4})]
    out = subprocess.run([*cmd, "--digest"] if digest else cmd, check=True, capture_output=True, text=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def test_fresh_process_rebuilds_the_same_policy_and_resumes_exactly(scratch: Path) -> None:
    # uninterrupted, in this process
    whole, sampler = run_nas(26, seed=5, batch_size=4)
    # the same seed, stopped after 13 trials and resumed by a fresh process (SQLite file)
    split = f"sqlite:///{scratch}/split.db"
    _worker(split, 13, seed=5)
    b = _worker(split, 13, seed=5, digest=True)  # replays the 13 finished trials first
    assert [t.params for t in whole.trials] == [
        t.params for t in optuna.load_study(study_name="s", storage=split).trials
    ]
    assert sampler.sync(whole) == b["updates"] == 6
    assert sampler.policy_digest() == b["digest"]
    # a sampler that only reads the storage rebuilds the same policy
    reader = RLControllerSampler(batch_size=4, constraints=SPACE)
    reader.sync(optuna.load_study(study_name="s", storage=split))
    assert reader.policy_digest() == b["digest"]


def test_int_and_float_params_fall_back_to_independent_sampling() -> None:
    def objective(trial: optuna.Trial) -> float:
        x = trial.suggest_float("x", -1, 1)
        n = trial.suggest_int("n", 1, 5)
        c = trial.suggest_categorical("c", ["a", "b"])
        return x + n + (c == "a")

    sampler = RLControllerSampler(seed=0, batch_size=4)
    study = optuna.create_study(direction="maximize", sampler=sampler)
    study.optimize(objective, n_trials=30)
    assert all(-1 <= t.params["x"] <= 1 and 1 <= t.params["n"] <= 5 for t in study.trials)
    rec = study.trials[-1].system_attrs[SAMPLE_KEY]
    assert len(rec["actions"]) == 1  # only the categorical is a decision


def _frozen(study: optuna.Study) -> optuna.trial.FrozenTrial:
    return study._storage.get_trial(study.ask()._trial_id)


def test_spaces_without_categorical_decisions_have_no_policy() -> None:
    sampler = RLControllerSampler(seed=0, batch_size=2)
    study = optuna.create_study(sampler=sampler)

    def objective(trial: optuna.Trial) -> float:
        trial.suggest_categorical("one", ["only"])  # a single choice is no decision
        return trial.suggest_float("x", -1, 1) ** 2

    study.optimize(objective, n_trials=8)
    assert all(t.state == TrialState.COMPLETE and SAMPLE_KEY not in t.system_attrs for t in study.trials)
    assert sampler.sync(study) == 0 and sampler.policy_digest() == "" and sampler.decision_probabilities() == {}
    for space in ({}, {"x": FloatDistribution(-1, 1)}, {"one": CategoricalDistribution(["only"])}):
        assert sampler.sample_relative(study, _frozen(study), space) == {}


def test_decisions_that_vanish_drop_the_policy_and_come_back_by_replay() -> None:
    def objective(trial: optuna.Trial) -> float:
        x = trial.suggest_float("x", -1, 1)
        return x + (trial.suggest_categorical("c", ["a", "b", "c"]) == "a") if trial.number < 6 else x

    sampler = RLControllerSampler(seed=0, batch_size=2)
    study = optuna.create_study(direction="maximize", sampler=sampler)
    study.optimize(objective, n_trials=12)  # from trial 6 on "c" leaves the (intersection) space
    assert SAMPLE_KEY in study.trials[5].system_attrs and SAMPLE_KEY not in study.trials[7].system_attrs
    assert sampler.sync(study) == 0 and sampler.policy_digest() == ""
    with_c = {"c": CategoricalDistribution(["a", "b", "c"])}
    assert set(sampler.sample_relative(study, _frozen(study), with_c)) == {"c"}  # rebuilt by replay
    fresh = RLControllerSampler(batch_size=2)
    fresh.sample_relative(study, _frozen(study), with_c)
    assert sampler.policy_digest() == fresh.policy_digest() != ""


def test_mixed_space_gives_the_categorical_part_with_its_own_type() -> None:
    # what Optuna's skipped generic test_sample_relative_mixed checks, as far as it applies here
    space = {"x": FloatDistribution(-1, 1), "y": CategoricalDistribution([-1, -10, -100])}
    study = optuna.create_study(sampler=RLControllerSampler(seed=0, batch_size=1))
    trial = study.ask(space)
    study.tell(trial, sum(trial.params.values()))
    for _ in range(5):
        params = study.sampler.sample_relative(study, _frozen(study), space)
        assert set(params) == {"y"} and type(params["y"]) is int and params["y"] in (-1, -10, -100)


def test_infinite_value_gets_the_floor_instead_of_poisoning_the_policy() -> None:
    values = [0.1 * i for i in range(12)]
    worst = values.copy()
    worst[5] = float("-inf")  # maximize: the worst possible value
    floored = values.copy()
    floored[5] = 0.0  # the lowest finite reward so far: the floor
    assert _digest(_history(worst)) == _digest(_history(floored))

    def objective(trial: optuna.Trial) -> float:
        a = trial.suggest_categorical("a", ["p", "q", "r"])
        return float("inf") if trial.number == 2 else float(a != "p")  # a diverged run, minimized

    sampler = RLControllerSampler(seed=0, batch_size=4)
    study = optuna.create_study(sampler=sampler)
    study.optimize(objective, n_trials=20)
    probs = sampler.decision_probabilities()["a"]
    assert all(0 < p < 1 for p in probs.values()), probs  # no NaN
    assert all(lp <= 0 for lp in study.trials[-1].system_attrs[SAMPLE_KEY]["logp"])  # NaN fails this


def test_multi_objective_is_refused() -> None:
    study = optuna.create_study(directions=["minimize", "minimize"], sampler=RLControllerSampler(seed=0))
    study.add_trial(
        create_trial(values=[1.0, 2.0], params={"a": "x"}, distributions={"a": CategoricalDistribution(["x", "y"])})
    )
    with pytest.raises(ValueError):
        study.optimize(lambda t: (float(t.suggest_categorical("a", ["x", "y"]) == "x"), 0.0), n_trials=1)
    with pytest.raises(ValueError):
        study.sampler.sync(study)
    with pytest.raises(ValueError):  # the independent fallback too, as Optuna's single-objective samplers do
        study.sampler.sample_independent(study, _frozen(study), "x", FloatDistribution(0, 1))


def test_argument_checks() -> None:
    for kw in (
        {"batch_size": 0},
        {"algorithm": "a2c"},
        {"lr": 0},
        {"baseline_decay": 1.0},
        {"ppo_clip": 0},
        {"hidden_size": 0},
        {"constraints": 3},
    ):
        with pytest.raises(ValueError):
            RLControllerSampler(**kw)


def _same_state(a: RLControllerSampler, b: RLControllerSampler) -> None:
    sa, sb = a._state, b._state
    assert sa.n_updates == sb.n_updates and a.policy_digest() == b.policy_digest() and sa.stats == sb.stats
    oa, ob = sa.optim.state_dict(), sb.optim.state_dict()
    assert oa["param_groups"] == ob["param_groups"] and oa["state"].keys() == ob["state"].keys()
    for k in oa["state"]:
        for name, value in oa["state"][k].items():
            assert torch.equal(value, ob["state"][k][name]), name


def _checkpoints(study: optuna.Study) -> dict:
    return {
        k: v for k, v in study._storage.get_study_system_attrs(study._study_id).items() if k.startswith(CHECKPOINT_KEY)
    }


def test_joining_worker_starts_from_the_stored_checkpoint_as_a_full_replay(scratch: Path) -> None:
    url = f"sqlite:///{scratch}/join.db"
    kw = {"constraints": SPACE, "batch_size": 4, "store_every": 4}
    study = optuna.create_study(storage=url, sampler=RLControllerSampler(seed=3, **kw), direction="maximize")
    study.optimize(nas_objective, n_trials=60)  # 59 finished at the last sample: 14 updates, stored at 4, 8, 12
    (rec,) = _checkpoints(study).values()
    assert rec["n_updates"] == 12
    joiner = RLControllerSampler(seed=3, **kw)
    assert joiner.sync(optuna.load_study(study_name=study.study_name, storage=url)) == 15
    assert joiner._checkpoint.restored == 12  # loaded, then replayed 3 updates
    full = RLControllerSampler(seed=3, **{**kw, "store_every": 0})
    full.sync(study)
    assert full._checkpoint.restored is None
    _same_state(joiner, full)
    # both continue the same: the joiner on the study, the full replay on a copy of it
    copy = optuna.create_study(direction="maximize", sampler=full)
    copy.add_trials(study.trials)
    study.sampler = joiner
    study.optimize(nas_objective, n_trials=9)
    copy.optimize(nas_objective, n_trials=9)
    assert [t.params for t in study.trials] == [t.params for t in copy.trials]
    assert [t.system_attrs[SAMPLE_KEY] for t in study.trials[60:]] == [
        t.system_attrs[SAMPLE_KEY] for t in copy.trials[60:]
    ]
    _same_state(joiner, full)


def test_corrupt_or_mismatched_checkpoint_means_a_full_replay() -> None:
    kw = {"constraints": SPACE, "batch_size": 4, "store_every": 3}
    study, _ = run_nas(30, seed=1, batch_size=4, store_every=3)
    ((key, rec),) = _checkpoints(study).items()
    full = RLControllerSampler(**{**kw, "store_every": 0})
    full.sync(study)
    ok = RLControllerSampler(**kw)
    ok.sync(study)
    assert ok._checkpoint.restored == rec["n_updates"] == 6
    _same_state(ok, full)
    for bad in (
        {**rec, "state": rec["state"][: len(rec["state"]) // 2]},  # truncated
        {**rec, "state": "not base64!"},
        {**rec, "history": "0" * 64},  # another history (e.g. a late trial moved the order)
        {**rec, "n_updates": 10**6},
        {**rec, "format": 0},
        "garbage",
    ):
        study._storage.set_study_system_attr(study._study_id, key, bad)
        s = RLControllerSampler(**kw)
        s.sync(study)
        assert s._checkpoint.restored == 0, bad if isinstance(bad, str) else {k: str(v)[:20] for k, v in bad.items()}
        _same_state(s, full)
    other = RLControllerSampler(**{**kw, "lr": 0.02})  # other settings: another key, not found
    other.sync(study)
    assert other._checkpoint.restored == 0


def test_checkpoint_is_written_once_every_store_every_updates() -> None:
    study = optuna.create_study(direction="maximize", sampler=RLControllerSampler(batch_size=2, store_every=5))
    writes: list[int] = []
    real = study._storage.set_study_system_attr
    study._storage.set_study_system_attr = lambda sid, k, v: (writes.append(v["n_updates"]), real(sid, k, v))[1]
    study.optimize(lambda t: float(t.suggest_categorical("a", ["x", "y", "z"]) == "z"), n_trials=45)
    assert writes == [5, 10, 15, 20]  # 44 finished at the last sample: 22 updates
    second = RLControllerSampler(batch_size=2, store_every=5)  # a second worker: the stored one is as recent
    study.sampler = second
    study.optimize(lambda t: float(t.suggest_categorical("a", ["x", "y", "z"]) == "z"), n_trials=1)
    assert second._checkpoint.restored == 20 and writes == [5, 10, 15, 20]


def test_stored_keys_keep_the_format_existing_studies_were_written_in() -> None:
    # written out here, not computed by the sampler's code: a study stored before the split
    # into rl_policy/rl_update/rl_state must find its checkpoint under the same key
    sampler = RLControllerSampler(seed=0, batch_size=2, store_every=1)
    study = optuna.create_study(direction="maximize", sampler=sampler)
    study.optimize(lambda t: float(t.suggest_categorical("a", ["x", "y", "z"]) == "z"), n_trials=5)
    decisions = [("a", ("x", "y", "z"))]
    sig = f"{zlib.crc32(repr(decisions).encode()):08x}"
    settings = (1, sig, repr(decisions), None, 64, 32, 0.01, 2, "ppo", 1e-3, 0.9, 0.2, 4, 1.0, 0, None, -0.07)
    digest = hashlib.sha256(repr((*settings, torch.__version__)).encode()).hexdigest()[:16]
    (key,) = _checkpoints(study)
    assert key == f"{CHECKPOINT_KEY}:{digest}" and CHECKPOINT_KEY == "rl:checkpoint" and SAMPLE_KEY == "rl:sample"
    rec = _checkpoints(study)[key]
    assert set(rec) == {"format", "settings", "n_updates", "history", "state"} and rec["format"] == 1
    state = torch.load(io.BytesIO(base64.b64decode(rec["state"])), weights_only=True)
    assert set(state) == {"policy", "optim", "stats"} and set(state["stats"]) == {"baseline", "scale2", "floor"}
    assert study.trials[-1].system_attrs[SAMPLE_KEY]["sig"] == sig
