import numpy as np
import pytest

from aas_ray.al import AASSampler, ConstraintStore, RandomSampler, SimulatedOracle, SamplerInput, cycle_budget, make_sampler
from aas_ray.al.sampling import draw_without_replacement, mixture, under_segmentation_probs
from aas_ray.checks import InputError
from aas_ray.cluster import build_views
from conftest import mixture as gm


def test_budget_formula():
    assert cycle_budget(1000, 0.0002) == 100  # ceil(0.0002 * 499500) = ceil(99.9)
    assert cycle_budget(2, 0.5) == 1
    with pytest.raises(ValueError):
        cycle_budget(10, 1.5)


def test_draw_is_distinct_and_follows_weights():
    rng = np.random.default_rng(0)
    p = np.array([0.7, 0.2, 0.1, 0.0])
    firsts = np.array([draw_without_replacement(p, 1, rng)[0] for _ in range(4000)])
    freq = np.bincount(firsts, minlength=4) / firsts.size
    assert abs(freq[0] - 0.7) < 0.03 and abs(freq[1] - 0.2) < 0.03 and freq[3] == 0
    d = draw_without_replacement(p, 10, rng)
    assert sorted(d.tolist()) == [0, 1, 2, 3] and d[-1] == 3  # zero-probability items last


def test_mixture_passes_mass_of_empty_pool():
    p_os, p_us = mixture(np.array([0.5, 0.5]), np.array([]), 0.6)
    assert np.isclose(p_os.sum(), 1.0)
    p_os, p_us = mixture(np.array([]), np.array([1.0]), 0.6)
    assert np.isclose(p_us.sum(), 1.0)
    p_os, p_us = mixture(np.array([1.0]), np.array([1.0]), 0.6)
    assert np.isclose(p_os.sum(), 0.6) and np.isclose(p_us.sum(), 0.4)


def test_us_probabilities_factorise():
    region = np.array([0, 0, 1, 1, 1])
    ptype = np.array([0, 0, 0, 1, 1])
    sims = np.array([0.5, 0.5, 0.2, 0.0, 0.0])
    rate = np.array([0.1, 0.3])
    p = under_segmentation_probs(region, ptype, sims, rate)
    assert np.isclose(p.sum(), 1.0)
    # type 0: π = 1/2; regions 0 and 1 share it with ρ = .25 / .75; ω by sim within region
    assert np.allclose(p[:3], [0.5 * 0.25 * 0.5, 0.5 * 0.25 * 0.5, 0.5 * 0.75 * 1.0])
    # type 1: only region 1, all sims 0 -> uniform ω
    assert np.allclose(p[3:], [0.25, 0.25])


def mixture_views(seed=3):
    x, y = gm(300, 16, 30, spread=0.9, seed=seed)
    v = build_views(x, k1=15, k2=4, eps=0.6, finch_partition="auto")
    return x, y, SamplerInput(x, v.labels_a, v.labels_b, v.graph.pair_sim)


def run_cycles(strategy, x, y, views, budget, seed=0, cycles=4):
    store, sampler, oracle, rng = ConstraintStore(len(y)), make_sampler(strategy), SimulatedOracle(y), np.random.default_rng(seed)
    asked = []
    for cycle in range(cycles):
        prop = sampler.propose(views, store, budget, rng)
        pairs = [tuple(p) for p in prop.draw.pairs.tolist()]
        # the whole budget is spent unless the open pool is smaller; never a pair twice
        assert len(pairs) == min(budget, prop.stats["pool_open"])
        assert len(set(pairs)) == len(pairs)
        assert not (set(pairs) & set(asked))
        assert all(u < v for u, v in pairs)
        # nothing the store already implies is asked again
        assert (store.implied(prop.draw.pairs) < 0).all()
        asked += pairs
        for (u, v), ans in zip(prop.draw.pairs, oracle.answer(prop.draw.pairs)):
            store.add(u, v, ans, cycle)
    return asked


@pytest.mark.parametrize("strategy", ["aas", "random"])
def test_cycles_spend_the_budget_never_repeat_a_pair_and_are_deterministic(strategy):
    x, y, views = mixture_views()
    budget = cycle_budget(300, 0.001)
    asked = run_cycles(strategy, x, y, views, budget)
    if strategy == "random":
        assert len(asked) == 4 * budget  # the random pool is every unasked pair: never exhausted
    else:
        assert budget <= len(asked) <= 4 * budget
    assert run_cycles(strategy, x, y, views, budget) == asked  # same seed, same pairs
    assert run_cycles(strategy, x, y, views, budget, seed=1) != asked


def test_aas_proposal_reports_pools():
    x, y, views = mixture_views()
    prop = AASSampler().propose(views, ConstraintStore(300), 50, np.random.default_rng(0))
    assert prop.stats["regions"] > 0
    assert len(prop.draw) == min(50, prop.stats["U_os"] + prop.stats["U_us"])
    assert set(prop.draw.pool.tolist()) <= {"os", "us"}
    assert np.all(prop.draw.probability >= 0)


def test_random_sampler_is_uniform_over_unasked():
    x, _ = gm(20, 4, 3)
    store = ConstraintStore(20)
    views = SamplerInput(x, np.zeros(20, int), np.zeros(20, int), lambda p: np.zeros(len(p)))
    prop = RandomSampler().propose(views, store, 190, np.random.default_rng(0))
    assert len(prop.draw) == 190  # every pair once
    for u, v in prop.draw.pairs[:100]:
        store.add(u, v, "CL")
    prop = RandomSampler().propose(views, store, 500, np.random.default_rng(1))
    assert len(prop.draw) == 90


def test_unknown_strategy():
    with pytest.raises(InputError, match="unknown sampling strategy 'entropy'; known: random, .*aas"):
        make_sampler("entropy")


def test_the_factory_refuses_unknown_parameters_and_the_samplers_bad_values():
    with pytest.raises(InputError, match="strategy 'random' has no parameter 'epsilon'; its parameters: none"):
        make_sampler("random", epsilon=0.5)
    with pytest.raises(InputError, match="strategy 'aas' has no parameter 'tau'; its parameters: epsilon, k_max"):
        make_sampler("aas", tau=0.5)
    assert make_sampler("aas", epsilon=0.25, k_max=3).epsilon == 0.25
    bad = [(lambda: AASSampler(epsilon=5), r"AASSampler: epsilon must be a number in \[0.0, 1.0\]; got 5"),
           (lambda: AASSampler(k_max=0), "AASSampler: k_max must be an integer >= 1; got 0"),
           (lambda: AASSampler(k_max=2.5), "AASSampler: k_max must be an integer >= 1; got 2.5"),
           (lambda: AASSampler(s_min=float("nan")), "AASSampler: s_min must be a number"),
           (lambda: AASSampler(pi=(1.0, 2.0)), "AASSampler: pi must be three weights"),
           (lambda: AASSampler(pi=(1.0, -1.0, 1.0)), r"AASSampler: pi\[1\] must be a number >= 0.0; got -1.0"),
           (lambda: make_sampler("nis", tau=0.0), "NISSampler: tau must be a number > 0.0; got 0.0"),
           (lambda: make_sampler("nis", neighbours=0), "NISSampler: neighbours must be an integer >= 1; got 0")]
    for build, message in bad:
        with pytest.raises(InputError, match=message):
            build()


def test_a_strategy_is_registered_once_and_named_by_its_registration():
    from aas_ray.al.registry import register_strategy

    with pytest.raises(ValueError, match="strategy 'aas' is registered twice"):
        register_strategy("aas", description="again", rank=0)(type("Again", (), {}))
    assert AASSampler.name == "aas" and make_sampler("farthest-nearest").name == "farthest-nearest"
