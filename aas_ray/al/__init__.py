"""Active learning by Ambiguity-Aware Sampling (docs/method.md §3-9): regions, pools, sampling,
constraints, the simulated oracle and NP3. Plain numpy in, arrays out."""

from aas_ray.al.constraints import Annotation, Answer, ConstraintStore, Contradiction, ContradictionError
from aas_ray.al.refine import np3
from aas_ray.al.oracle import SimulatedOracle
from aas_ray.al.regions import find_regions, region_index
from aas_ray.al.sampling import PairDraw, cycle_budget, total_pairs
from aas_ray.al.samplers import AASSampler, PairSampler, Proposal, RandomSampler, Views, make_sampler

__all__ = [
    "AASSampler", "Annotation", "Answer", "ConstraintStore", "Contradiction", "ContradictionError",
    "PairDraw", "PairSampler", "Proposal", "RandomSampler", "SimulatedOracle", "Views",
    "cycle_budget", "find_regions", "make_sampler", "np3", "region_index", "total_pairs",
]
