"""Active learning by Ambiguity-Aware Sampling (docs/method.md §3-9): regions, pools, sampling,
constraints, the simulated oracle and NP3. Plain numpy in, arrays out.

Importing the package registers every pair sampler (:mod:`aas_ray.al.registry`)."""

from aas_ray.al.constraints import Annotation, Answer, ConstraintStore, Contradiction, ContradictionError
from aas_ray.al.refine import np3
from aas_ray.al.oracle import SimulatedOracle
from aas_ray.al.regions import find_regions, region_index
from aas_ray.al.sampling import PairDraw, cycle_budget, total_pairs
from aas_ray.al.interface import PairSampler, Proposal, SamplerInput, cosine_pair_sim
from aas_ray.al.registry import config_keys, list_strategies, make_sampler, strategy_entry, strategy_params
from aas_ray.al.samplers import AASSampler, RandomSampler
from aas_ray.al.baselines import (
    FarthestNearestSampler, GBASSampler, LBASSampler, NearestSampler, NISSampler, UncertaintySampler,
)

__all__ = [
    "AASSampler", "Annotation", "Answer", "ConstraintStore", "Contradiction", "ContradictionError",
    "FarthestNearestSampler", "GBASSampler", "LBASSampler", "NISSampler", "NearestSampler", "PairDraw",
    "PairSampler", "Proposal", "RandomSampler", "SamplerInput", "SimulatedOracle", "UncertaintySampler",
    "config_keys", "cosine_pair_sim", "cycle_budget", "find_regions", "list_strategies", "make_sampler", "np3",
    "region_index", "strategy_entry", "strategy_params", "total_pairs",
]
