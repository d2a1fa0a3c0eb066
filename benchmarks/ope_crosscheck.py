"""Cross-check of ``recsys_spark.evaluation.ope`` against the Open Bandit Pipeline (obp): IPW,
SNIPW, DM and DR (plain and clipped) computed by both on the same arrays.

obp is not a dependency of this project (obp 0.5.7 pins Python < 3.11 and torch 1.12): run this
with a throwaway environment that has it, and this repository on the path:

    python3.11 -m venv /tmp/obpvenv
    /tmp/obpvenv/bin/pip install --no-deps --ignore-requires-python obp==0.5.7
    /tmp/obpvenv/bin/pip install "numpy<2" scipy scikit-learn "pandas<3" matplotlib seaborn tqdm pyyaml \
        mypy-extensions torch
    PYTHONPATH=. /tmp/obpvenv/bin/python benchmarks/ope_crosscheck.py

Two logs: obp's ``SyntheticBanditDataset`` (one position per round), and a 3-slot log of
uniformly shuffled lists passed to obp with its ``position`` argument (our per-position rows).
Prints both values per estimator with their relative difference; exits 1 if one exceeds
``--tolerance``. Our per-exposure value is obp's per-round mean.
"""

from __future__ import annotations

import argparse
import sys

import numpy as np
from obp.dataset import SyntheticBanditDataset, logistic_reward_function
from obp.ope import DirectMethod, DoublyRobust, InverseProbabilityWeighting, SelfNormalizedInverseProbabilityWeighting

from recsys_spark.evaluation import ope


def single_position_case(rounds: int, seed: int) -> tuple[dict, np.ndarray, np.ndarray]:
    """obp's synthetic log, an epsilon-greedy candidate and a noisy reward model.

    Returns:
        (obp's arguments: action, reward, pscore, position, action_dist [n, A, 1],
         estimated_rewards_by_reg_model [n, A, 1]; the users [n]; the slots [n]).
    """
    dataset = SyntheticBanditDataset(n_actions=10, dim_context=5, reward_type="binary",
                                     reward_function=logistic_reward_function, beta=-2.0, random_state=seed)
    log = dataset.obtain_batch_bandit_feedback(n_rounds=rounds)
    rng = np.random.default_rng(seed)
    best = np.argmax(log["expected_reward"], axis=1)
    # The candidate: the best action with 0.9, else uniform (0.1 / 10 each).
    action_dist = np.full((rounds, 10), 0.01)
    action_dist[np.arange(rounds), best] += 0.9
    q_hat = np.clip(log["expected_reward"] + rng.normal(0, 0.1, size=(rounds, 10)), 0, 1)
    arrays = dict(action=log["action"], reward=log["reward"], pscore=log["pscore"],
                  position=np.zeros(rounds, dtype=int), action_dist=action_dist[:, :, None],
                  estimated_rewards_by_reg_model=q_hat[:, :, None])
    return arrays, np.arange(rounds), np.zeros(rounds, dtype=int)


def slate_case(lists: int, seed: int) -> tuple[dict, np.ndarray, np.ndarray]:
    """Lists of 3 slots drawn as the head of a uniform shuffle of 10 items (each item has
    propensity 1/10 in each slot), position-biased clicks, a softmax candidate per (user, slot).

    Returns: see :func:`single_position_case`; rows are (list, slot), action_dist [n, A, 3].
    """
    items, slots = 10, 3
    rng = np.random.default_rng(seed)
    shown = np.argsort(rng.random((lists, items)), axis=1)[:, :slots]
    attraction = rng.uniform(0.05, 0.6, size=(lists, items))
    click = attraction[:, None, :] * np.array([1.0, 0.6, 0.35])[None, :, None]  # [list, slot, item]
    user, slot = np.repeat(np.arange(lists), slots), np.tile(np.arange(slots), lists)
    action = shown.ravel()
    reward = (rng.random(len(action)) < click[user, slot, action]).astype(int)
    logits = rng.normal(size=(lists, slots, items)) + 3 * attraction[:, None, :]
    target = np.exp(logits) / np.exp(logits).sum(axis=2, keepdims=True)  # [list, slot, item]
    q_hat = np.clip(click + rng.normal(0, 0.05, size=click.shape), 0, 1)
    # obp's [round, action, position]: row i's distributions at every position of its list.
    arrays = dict(action=action, reward=reward, pscore=np.full(len(action), 1 / items), position=slot,
                  action_dist=target[user].transpose(0, 2, 1),
                  estimated_rewards_by_reg_model=q_hat[user].transpose(0, 2, 1))
    return arrays, user, slot


def compare(name: str, arrays: dict, user: np.ndarray, slot: np.ndarray, clip: float) -> list[float]:
    """Prints obp's and our per-round value of every estimator; returns the relative differences."""
    n = len(arrays["action"])
    rows = np.arange(n)
    action_dist = arrays["action_dist"][rows, :, arrays["position"]]  # [n, A]
    q_hat = arrays["estimated_rewards_by_reg_model"][rows, :, arrays["position"]]
    feedback = ope.LoggedFeedback(user=user, slot=slot, item=arrays["action"], propensity=arrays["pscore"],
                                  reward=arrays["reward"], target_propensity=action_dist[rows, arrays["action"]])
    q_logged, q_target = q_hat[rows, arrays["action"]], (action_dist * q_hat).sum(axis=1)
    settings = dict(per="exposure", min_effective_sample_size=0, samples=200)
    ours = {
        "IPW": ope.estimate_ips(feedback, **settings),
        f"IPW clip {clip:g}": ope.estimate_ips(feedback, clip=clip, **settings),
        "SNIPW": ope.estimate_snips(feedback, **settings),
        "DM": ope.estimate_dm(feedback, q_target, **settings),
        "DR": ope.estimate_dr(feedback, q_logged, q_target, **settings),
        f"DR clip {clip:g}": ope.estimate_dr(feedback, q_logged, q_target, clip=clip, **settings),
    }
    base = {k: arrays[k] for k in ("action", "reward", "pscore", "position", "action_dist")}
    model = dict(base, estimated_rewards_by_reg_model=arrays["estimated_rewards_by_reg_model"])
    theirs = {
        "IPW": InverseProbabilityWeighting().estimate_policy_value(**base),
        f"IPW clip {clip:g}": InverseProbabilityWeighting(lambda_=clip).estimate_policy_value(**base),
        "SNIPW": SelfNormalizedInverseProbabilityWeighting().estimate_policy_value(**base),
        "DM": DirectMethod().estimate_policy_value(
            position=arrays["position"], action_dist=arrays["action_dist"],
            estimated_rewards_by_reg_model=arrays["estimated_rewards_by_reg_model"]),
        "DR": DoublyRobust().estimate_policy_value(**model),
        f"DR clip {clip:g}": DoublyRobust(lambda_=clip).estimate_policy_value(**model),
    }
    print(f"\n{name}: {n:,} rounds, {len(np.unique(user)):,} lists, ESS {ours['IPW'].ess:,.1f}")
    print(f"  {'estimator':<14}{'obp':>22}{'recsys_spark.ope':>22}{'relative diff':>16}")
    differences = []
    for estimator, estimate in ours.items():
        reference = float(theirs[estimator])
        difference = abs(estimate.value - reference) / abs(reference)
        differences.append(difference)
        print(f"  {estimator:<14}{reference:>22.15f}{estimate.value:>22.15f}{difference:>16.2e}")
    return differences


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=20_000, help="rounds of obp's synthetic log")
    parser.add_argument("--lists", type=int, default=10_000, help="3-slot lists of the slate log")
    parser.add_argument("--clip", type=float, default=5.0, help="obp's lambda_ for the clipped variants")
    parser.add_argument("--seed", type=int, default=12345)
    parser.add_argument("--tolerance", type=float, default=1e-9, help="largest relative difference allowed")
    args = parser.parse_args(argv)

    differences = compare("obp SyntheticBanditDataset", *single_position_case(args.rounds, args.seed), args.clip)
    differences += compare("3-slot lists, obp position argument", *slate_case(args.lists, args.seed), args.clip)
    worst = max(differences)
    print(f"\nlargest relative difference {worst:.2e} (tolerance {args.tolerance:g})")
    return 0 if worst <= args.tolerance else 1


if __name__ == "__main__":
    sys.exit(main())
