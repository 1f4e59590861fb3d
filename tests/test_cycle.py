"""One AL cycle (docs/method.md §3-8, §13): budget bookkeeping, oracle or person, journal,
the per-cycle row with pool yields, and the words it says when the method cannot work."""

import numpy as np
import pandas as pd
import pytest

from aas_ray.al import ConstraintStore, SimulatedOracle
from aas_ray.cluster import ClusterViews, build_views, jaccard_graph
from aas_ray.config import ConfigError, load_config
from aas_ray.experiment.journal import AnnotationJournal
from aas_ray.experiment.cycle import ALCycle, explain, pair_similarity, pool_yield
from conftest import mixture


def cfg_with(*sets):
    return load_config(None, ["cluster.k1=15", "cluster.k2=4", *sets])


@pytest.fixture(scope="module")
def data():
    x, y = mixture(300, 16, 30, spread=0.9, seed=3)
    return x, y, build_views(x, k1=15, k2=4, eps=0.6, finch_partition="auto")


def test_budget_pairs_and_budget_fraction_are_exclusive():
    assert cfg_with("al.budget_pairs=25").al.cycle_budget(1000) == 25
    assert cfg_with("al.budget_fraction=0.001").al.cycle_budget(1000) == 500  # ceil(0.001 * 499500)
    assert cfg_with().al.cycle_budget(1000) == 100  # the paper's 0.02 % when neither is set
    with pytest.raises(ConfigError, match="only one of budget_fraction"):
        cfg_with("al.budget_pairs=25", "al.budget_fraction=0.001")


def test_cycle_row_counts_answers_per_pool(tmp_path, data):
    x, y, views = data
    cfg = cfg_with("al.budget_pairs=40")
    store = ConstraintStore(300)
    journal = AnnotationJournal(tmp_path / "a.jsonl")
    cycle = ALCycle(cfg, 300, store, np.random.default_rng(0), SimulatedOracle(y), journal, tmp_path / "pairs.csv")
    row = cycle.run(1, x, views).row
    pairs = pd.read_csv(tmp_path / "pairs.csv")
    assert len(pairs) == row["pairs_asked"] == min(40, row["U_os"] + row["U_us"])
    same = y[pairs["u"]] == y[pairs["v"]]
    for pool in ("os", "us"):
        sel = (pairs["pool"] == pool).to_numpy()
        assert row.get(f"asked_{pool}", 0) == sel.sum()
        assert row.get(f"ml_{pool}", 0) == (same & sel).sum()
    assert row["must_link"] == same.sum() and row["cannot_link"] == (~same).sum()
    assert row["utilised_budget"] == pytest.approx(len(pairs) / (300 * 299 / 2))
    assert len(journal.read()) == len(pairs)
    # The same cycle again (a resume after a crash) asks only what is left of its budget.
    assert cycle.budget_left(1) == 40 - len(pairs)
    assert cycle.budget_left(2) == 40


def test_run_budget_carries_over_between_cycles(data):
    x, y, views = data
    store = ConstraintStore(300)
    cycle = ALCycle(cfg_with("al.strategy=random", "al.budget_pairs=100", "al.budget_per=run"), 300, store,
                    np.random.default_rng(0), SimulatedOracle(y))
    assert cycle.budget_left(1) == 100
    cycle.sampler.propose = _capped(cycle.sampler.propose, 30)
    assert cycle.run(1, x, views).row["pairs_asked"] == 30
    assert cycle.budget_left(2) == 70  # what cycle 1 left
    row = cycle.run(2, x, views).row
    assert row["pairs_asked"] == 30 and cycle.budget_left(3) == 40
    per_cycle = ALCycle(cfg_with("al.strategy=random", "al.budget_pairs=100"), 300, store, np.random.default_rng(0),
                        SimulatedOracle(y))
    assert per_cycle.budget_left(3) == 100


def _capped(propose, cap):
    """A sampler whose pool holds only ``cap`` open pairs per cycle."""
    def run(views, store, budget, rng):
        return propose(views, store, min(budget, cap), rng)
    return run


def test_random_cycle_spends_its_whole_budget(data):
    x, y, views = data
    cycle = ALCycle(cfg_with("al.strategy=random", "al.budget_pairs=60"), 300, ConstraintStore(300),
                    np.random.default_rng(0), SimulatedOracle(y))
    row = cycle.run(1, x, views).row
    assert row["asked_random"] == row["pairs_asked"] == 60 and "regions" not in row


def test_a_person_gets_the_pairs_back_as_pending(data):
    x, y, views = data
    store = ConstraintStore(300)
    cycle = ALCycle(cfg_with("al.budget_pairs=20", "al.oracle=human"), 300, store, np.random.default_rng(0))
    out = cycle.run(1, x, views)
    assert out.row is None and len(out.pending.pairs) == 20 and not store.annotations
    answers = ["same" if y[u] == y[v] else "different" for u, v in out.pending.pairs]
    row = cycle.record(out.pending, answers, "human")
    assert row["pairs_asked"] == 20 and {a.source for a in store.annotations} == {"human"}
    assert row["regions"] == out.pending.stats["regions"]  # what the sampler saw when it chose them


def test_only_sampled_strategies_have_cycles():
    with pytest.raises(ValueError, match="asks no oracle"):
        ALCycle(cfg_with("al.strategy=none"), 10, ConstraintStore(10), np.random.default_rng(0))


def test_pool_yield():
    got = pool_yield(np.array(["os", "us", "us", "us"]), np.array([1, 0, 1, 1]))
    assert got == {"asked_os": 1, "ml_os": 1, "asked_us": 3, "ml_us": 2}


def fake_views(labels_a):
    x, _ = mixture(len(labels_a), 8, 4, seed=0)
    return ClusterViews(jaccard_graph(x, 5, 2), 0.6, np.asarray(labels_a), np.zeros(len(labels_a), int))


def test_explain_names_the_cause_and_the_setting():
    cfg = cfg_with()
    one = explain(fake_views([0] * 90 + [1] * 10), {"regions": 1, "largest_region": 100, "U_os": 0, "U_us": 5,
                                                    "pool_open": 5}, 20, cfg)
    text = " ".join(one)
    assert "90% of the images into one cluster" in text and "a smaller cluster.k1" in text  # eps is auto already
    fixed = " ".join(explain(fake_views([0] * 90 + [1] * 10), {"regions": 2}, 20, cfg_with("cluster.eps=0.6")))
    assert "SpCL's eps 0.6 was set for person re-ID" in fixed and "try cluster.eps: auto" in fixed
    assert "single region of uncertainty holds 100 images" in text and "finch_partition: 0" in text
    assert "15 pairs of budget stay unspent" in text and "U_os 0 and U_us 5 pairs" in text
    # any strategy whose pool runs dry says so, in its own words
    dry = " ".join(explain(fake_views(list(range(50)) * 2), {"pool_open": 3}, 10, cfg_with("al.strategy=nearest")))
    assert "7 pairs of budget stay unspent (nearest has no further pair to ask)" in dry
    noise = explain(fake_views([-1] * 95 + [0] * 5), {"regions": 3, "U_os": 0, "U_us": 4, "pool_open": 4}, 4, cfg)
    text = " ".join(noise)
    assert "95% of the images as noise" in text
    assert "U_os is empty" in text and "cluster.similarity: cosine" in text and "Jaccard" in text
    assert explain(fake_views(list(range(50)) * 2), {"regions": 0, "U_os": 0, "U_us": 0, "pool_open": 0}, 5, cfg) \
        == ["views A and B agree everywhere: no region of uncertainty, nothing to ask this cycle "
            "(training goes on with plain SpCL)"]


def test_cosine_similarity_path_gives_over_segmentation_pairs():
    # The paper's Jaccard similarity rarely links medoids of different regions; cosine does.
    # CNN features share a common direction (all cosines well above 0): so do these.
    x, y = mixture(300, 16, 30, spread=0.9, seed=3)
    x = x + 0.2
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    views = build_views(x, k1=15, k2=4, finch_partition=0)
    jac = ALCycle(cfg_with("al.budget_pairs=500"), 300, ConstraintStore(300), np.random.default_rng(0), SimulatedOracle(y))
    cos = ALCycle(cfg_with("al.budget_pairs=500", "cluster.similarity=cosine"), 300, ConstraintStore(300),
                  np.random.default_rng(0), SimulatedOracle(y))
    r_jac, r_cos = jac.run(1, x, views).row, cos.run(1, x, views).row
    assert r_cos["regions"] == r_jac["regions"] > 2
    for r in (r_jac, r_cos):  # what the budget allowed, what stayed unspent, and the pool it came from
        assert r["budget"] == 500 and r["unspent"] == 500 - r["pairs_asked"] and r["pool_open"] >= r["pairs_asked"]
    assert r_cos["U_os"] >= 10 * max(r_jac["U_os"], 1)
    sim = pair_similarity("cosine", views, x)
    pairs = np.array([[0, 1], [2, 3]])
    np.testing.assert_allclose(sim(pairs), np.clip(np.einsum("ij,ij->i", x[[0, 2]], x[[1, 3]]), 0, 1), rtol=1e-6)


def test_simulate_at_equal_pairs_gives_every_strategy_what_aas_asked(data):
    from aas_ray.checks import InputError
    from aas_ray.experiment.simulate import simulate

    x, y, views = data
    cfg = cfg_with("al.budget_pairs=3000", "al.cycles=2")  # more than AAS's pools hold
    free = simulate(x, y, cfg, ("aas", "random", "uncertainty"), views=views)
    equal = simulate(x, y, cfg, ("random", "aas", "uncertainty"), views=views, pairs_of="aas")
    asked = {s: t.set_index("cycle")["pairs_asked"] for s, t in equal[equal.cycle > 0].groupby("strategy")}
    dry = free[(free.strategy == "aas") & (free.cycle > 0)].set_index("cycle")["pairs_asked"]
    assert (dry < 3000).all()  # AAS's pools ran dry below the budget ...
    assert free[(free.strategy == "random") & (free.cycle == 1)]["pairs_asked"].item() == 3000  # ... random's did not
    assert asked["aas"].equals(dry)  # the reference itself is unchanged
    for other in ("random", "uncertainty"):
        assert (asked[other] == asked["aas"]).all(), other
        assert (equal[(equal.strategy == other) & (equal.cycle > 0)]["budget"] == asked["aas"].to_numpy()).all()
    assert equal.strategy.iloc[0] == "aas"  # the reference runs first
    with pytest.raises(InputError, match="--pairs-of 'nearest'"):
        simulate(x, y, cfg, ("aas", "random"), views=views, pairs_of="nearest")
