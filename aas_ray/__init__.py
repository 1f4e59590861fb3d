"""aas-ray: Ambiguity-Aware Sampling (Sani et al., AAAI 2026) for animal re-ID on Ray.

Layers (each importable alone):
  1. algorithms  -- ``aas_ray.cluster``, ``aas_ray.al``, ``aas_ray.eval``: arrays in, arrays out.
  2. experiment  -- ``aas_ray.data``, ``aas_ray.models``, ``aas_ray.experiment``: one process.
  3. orchestration -- ``aas_ray.orchestration`` and the CLI: Ray, Tune, MLflow, jobs.
"""

__version__ = "0.1.0"
